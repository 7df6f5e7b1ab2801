// A preload for chasing a native crash in a process we do not build (python3 running
// headinfer._core): on SIGSEGV, SIGBUS or SIGABRT it prints the native stack, each frame as
// module(symbol+offset) or module(+offset), then lets the signal take its course.
//   gcc -shared -fPIC -O0 -o /tmp/crash_backtrace.so scripts/debug/crash_backtrace.c
//   LD_PRELOAD=/tmp/crash_backtrace.so python3 ...
// scripts/debug/python_gpu_crash.sh uses it and maps _core's offsets to function names.
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_crash(int sig) {
  void* frames[128];
  const char* name = sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "SIGABRT";
  (void)!write(2, "[crash] native stack on ", 24);
  (void)!write(2, name, strlen(name));
  (void)!write(2, ":\n", 2);
  const int n = backtrace(frames, 128);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_crash;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGBUS, &sa, NULL);
  sigaction(SIGABRT, &sa, NULL);
}
