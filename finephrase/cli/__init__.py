"""The command line, a thin layer over the library: parse, call, print.

* :mod:`.main` — ``finephrase`` and its run/demo/card/push/serve/setup commands (``finephrase = finephrase.cli.main:main``);
* :mod:`.prompts` — ``finephrase prompts ...``; :mod:`.quality` — ``finephrase quality ...``;
* :mod:`.cluster` — ``finephrase launch / status / stop``.

What it may import: everything in finephrase (it is the top of the tree); nothing imports it.
"""
