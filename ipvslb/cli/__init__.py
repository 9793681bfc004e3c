"""The ``ipvslb`` command line: one module per command, kept thin (parse options, call the
library, map errors to exit codes). ``main`` is the click group.

May import anything in ipvslb; nothing in ipvslb imports ``cli`` (only ``ipvslb.__main__``).
"""
