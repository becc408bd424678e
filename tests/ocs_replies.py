"""Checks of OCSClient replies shared by the integration tests."""


def ok(reply):
    """The op ran and succeeded; returns its ``session.data``."""
    assert reply.status == 0 and reply.session["success"], reply
    return reply.session["data"]


def failed(reply):
    """The op ran and returned (False, msg): status 0, success False.  Returns the session messages."""
    assert reply.status == 0 and reply.session["success"] is False, reply
    return " ".join(m[1] for m in reply.session["messages"])
