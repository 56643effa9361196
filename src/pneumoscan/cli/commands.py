"""What every command module uses to add its sub-commands (kept apart from the entry point, which
imports the command modules)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows a default only when it says something: never after a
    help text that names its own default, never "(default: None)" or a flag's "(default: True)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("(default" in text or action.default is None or isinstance(action.default, bool)
                or action.default is argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def add_command(subparsers, name: str, help: str, example: str, func) -> argparse.ArgumentParser:
    """Add a sub-command whose ``--help`` ends with a usage example."""
    command = subparsers.add_parser(
        # argparse %-formats a sub-command's help line (not its description): "95% CI" would crash --help.
        name, help=help.replace("%", "%%"), description=help, epilog=f"example:\n  {example}", formatter_class=HelpFormatter
    )
    command.set_defaults(func=func)
    return command
