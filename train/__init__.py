"""Model lifecycle: fine-tuning with Ray Train, search with Ray Tune, optimisation, registration."""
