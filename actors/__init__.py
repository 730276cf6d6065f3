"""baton's data plane as plain Python classes: router, specialists, monitor, audit."""
