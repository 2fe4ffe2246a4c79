/* Logging for the agent: formats on the stack and writes once to stderr; never allocates. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

void gvm_log(int level, const char *fmt, ...) {
  if (level > gvm_config.log_level) return;
  static const char *const names[] = {"error", "warn", "info", "debug"};
  int saved = errno;
  char buf[512];
  int n = snprintf(buf, sizeof buf, "[gvm %d %s] ", (int)getpid(), names[level & 3]);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof buf) n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof buf - 1) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
  (void)w;
  errno = saved;
}
