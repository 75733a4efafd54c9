"""The one exception type for a user's mistake. Kept apart so the CLI can catch it without importing pydantic."""


class UserError(Exception):
    """A user's mistake (config, data, paths): the CLI prints its lines without a traceback and exits 2.

    Anything else that escapes is a bug and keeps its traceback.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
