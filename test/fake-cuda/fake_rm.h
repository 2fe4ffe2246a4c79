/* Exported surface of libgvmfakerm.so: the libc ioctl override plus helpers that
 * tests and the fake libcuda use to look inside the emulated resource manager. */
#ifndef GVM_FAKE_RM_H
#define GVM_FAKE_RM_H

#ifdef __cplusplus
extern "C" {
#endif

/* Marks fd as an RM device node; ioctls on other fds go to the next ioctl. */
void fakeRmRegisterFd(int fd);
/* Emulates one RM ioctl without going through the global ioctl symbol; the fake
 * libcuda falls back to it when libgvmfakerm is not interposed (see README). */
int fakeRmIoctl(int fd, unsigned long request, void *arg);

unsigned fakeRmTimeslice(unsigned hTsg);
int fakeRmChannelDisabled(unsigned hChannel);
unsigned long fakeRmControlCount(unsigned cmd);
/* Called (outside the RM lock) whenever a disable-channels control changed state. */
void fakeRmSetChannelHook(void (*hook)(void));
/* Called (outside the RM lock) after a preempt with bWait or a preempting disable: it returns once
 * no operation of a stopped context is still running, as the real RM answers only then. */
void fakeRmSetStopHook(void (*hook)(void));
/* Called (outside the RM lock) before each control is applied, with its command and params. */
void fakeRmSetBeforeControlHook(void (*hook)(unsigned cmd, const void *params, unsigned size));

#ifdef __cplusplus
}
#endif
#endif
