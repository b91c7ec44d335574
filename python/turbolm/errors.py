"""UserError: a mistake the user can fix (bad path, bad flag, bad checkpoint). The CLI prints its
message as one line and exits 2; library callers catch it like any ValueError."""


class UserError(ValueError):
    pass
