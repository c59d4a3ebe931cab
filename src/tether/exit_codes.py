"""The `tether` command's exit statuses (documented in README.md, "Service CLI")."""

OK = 0
#: something failed: one line on stderr says what ("tether: error: ...")
ERROR = 1
#: the command line was wrong (argparse's own status)
USAGE = 2
#: what was waited for did not come in time: a recv's --timeout ran out, or the service did
#: not answer (--connect-timeout, the session's retry limit, the client's request_timeout)
TIMEOUT = 3
#: interrupted: 128 + the signal's number (SIGINT 130, SIGTERM 143), as shells report it
INTERRUPTED_BASE = 128
