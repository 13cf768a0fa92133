"""Never finishes importing: a busy loop at module level, deaf to SIGTERM, SIGINT and SIGXCPU."""

import signal

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
while True:
    pass
