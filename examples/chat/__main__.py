"""``python examples/chat``: run the chat (the code is in ``chat.py``, a module
the worker processes of ``--workers`` can import)."""

from chat import main

main()
