"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class HybridftError(Exception):
    """A problem with the user's input (recipe, data, model folder, paths).

    The CLI prints ``error: <message>`` and exits with status 2; anything else that escapes is a
    bug in hybridft and keeps its traceback.
    """
