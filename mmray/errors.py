"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a single line on stderr and exit status 2, with no traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a file, key or value at fault. The message names it."""
