class StepSetupError(Exception):
    """A step cannot be started as configured; the message, for the person, becomes the step's failure reason."""
