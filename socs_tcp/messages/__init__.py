"""Layer 2, message-oriented links: tcpcom-style client/server (threads) and
the asyncio JSON-lines client of ``ts_m2com``."""
