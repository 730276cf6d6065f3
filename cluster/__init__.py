"""baton's control plane: config, storage, registry, keys, local cluster and the CLI."""
