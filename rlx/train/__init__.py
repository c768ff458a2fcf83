"""Training: the RL loop, SFT, train state and optimizer construction."""
