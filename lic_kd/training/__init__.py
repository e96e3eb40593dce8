"""Training one network or students together: losses, the LightningModule, precision, run setup and resume."""
