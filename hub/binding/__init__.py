"""Purpose binding (用途绑定): the prepared case a pull or download is bound to — one read, then
pure checks.
"""
