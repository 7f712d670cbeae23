"""The tests' helpers: servers (``http_server``, ``bucket``), builds (``deadly``), a whole format (``npz_format``),
and the modules the tests hand to worker processes. A worker imports those by name (``Executor.warm_up``), so they
are named here, never spelled as loose strings; importing them in the test process would run them."""

WARM_RECORD = f"{__name__}.warm_record"  # leaves the worker's pid in $TGLC_TEST_WARM_DIR
WARM_DIE = f"{__name__}.warm_die"  # kills the worker, as the OOM killer would
