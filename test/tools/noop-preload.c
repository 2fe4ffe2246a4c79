/* A do-nothing shared library: tests point GVM_AGENT_PATH at it to check `gvm run`'s LD_PRELOAD. */
int gvm_test_noop_preload(void);
int gvm_test_noop_preload(void) { return 0; }
