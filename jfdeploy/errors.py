"""One error family for everything a user can get wrong; messages say what was expected and what came."""


class JfDeployError(Exception):
    """Base class of jfdeploy's user-facing errors."""


class CheckpointError(JfDeployError):
    """A checkpoint that cannot be read or does not match the model."""


class InputError(JfDeployError):
    """A frame, mask, video or option that the toolkit cannot use."""
