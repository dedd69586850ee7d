#!/usr/bin/env python3
"""Write the flags of timm's own scripts (names, dest, default, nargs, choices) as JSON facts.

    python scripts/read_timm_flags.py DIR --commit SHA > tests/data/timm_script_flags.json

DIR holds timm's ``train.py``, ``validate.py`` and ``benchmark.py`` from a checkout of
huggingface/pytorch-image-models (outside that checkout, so the installed timm is imported). Each
script's module-level parser is built by running the module under another name than ``__main__``
(its ``main()`` does not run); the flags are read off ``parser._actions``. The test
``tests/test_timm_flags.py`` holds the project's parsers against this list.
"""
import argparse
import json
import os
import runpy
import sys

import timm

SCRIPTS = ('train.py', 'validate.py', 'benchmark.py')


def jsonable(value):
    """A default as JSON: literals as they are, anything else by its repr."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def read_flags(path: str) -> list:
    """Every flag (positionals with empty ``options``) of the module-level parser(s) of the script at ``path``, in declaration order."""
    namespace = runpy.run_path(path, run_name='timm_script_flags')
    parsers = [namespace[name] for name in ('config_parser', 'parser') if isinstance(namespace.get(name), argparse.ArgumentParser)]
    flags = []
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags.append(dict(
                options=list(action.option_strings),
                dest=action.dest,
                default=jsonable(action.default),
                nargs=jsonable(action.nargs),
                const=jsonable(action.const),
                choices=jsonable(list(action.choices)) if action.choices is not None else None,
                action=type(action).__name__,
            ))
    return flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('scripts_dir')
    parser.add_argument('--commit', required=True, help='the pytorch-image-models commit the scripts come from')
    args = parser.parse_args()
    facts = dict(
        source='huggingface/pytorch-image-models', commit=args.commit, timm_installed=timm.__version__,
        scripts={name: read_flags(os.path.join(args.scripts_dir, name)) for name in SCRIPTS},
    )
    json.dump(facts, sys.stdout, indent=1)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
