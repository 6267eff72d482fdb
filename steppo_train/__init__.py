"""steppo_train: step-level advantages, losses and the trainer."""
