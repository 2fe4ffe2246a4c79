/*
 * The few NVIDIA resource-manager (RM) constants gvm needs, from NVIDIA's open kernel modules
 * (src/common/sdk/nvidia/inc: nvos.h, class headers, ctrla06c.h, ctrl2080fifo.h) and measured on
 * driver 580 (../shared/notes/rm-controls.md).
 */
#ifndef GVM_RM_ABI_H
#define GVM_RM_ABI_H

#include <dlfcn.h>

#define RM_IOCTL_MAGIC 'F'
#define RM_ESC_FREE 0x29
#define RM_ESC_CONTROL 0x2A
#define RM_ESC_ALLOC 0x2B

#define RM_CLASS_DEVICE 0x0080u    /* NV01_DEVICE_0: params begin with u32 deviceId */
#define RM_CLASS_SUBDEVICE 0x2080u /* NV20_SUBDEVICE_0 */
#define RM_CLASS_TSG 0xA06Cu       /* KEPLER_CHANNEL_GROUP_A */
#define RM_TSG_ENGINE_TYPE_OFFSET 12 /* hObjectError, hObjectEccError, hVASpace, engineType */
#define RM_ENGINE_GR 1u

/* {u8 bEnable, u8 bSkipSubmit, u8 bSkipEnable}: libcuda schedules each new TSG once its channels exist
 * (seen in every H100 trace: alloc TSG, its channels, then this with bEnable=1) */
#define RM_CMD_TSG_SCHEDULE 0xa06c0101u
#define RM_CMD_CHANNEL_SCHEDULE 0xa06f0103u /* {u8 bEnable, u8 bSkipSubmit}: the same for one channel */
#define RM_CMD_TSG_SET_TIMESLICE 0xa06c0103u /* u64 timesliceUs */
#define RM_CMD_TSG_GET_TIMESLICE 0xa06c0104u /* u64 timesliceUs */
#define RM_CMD_TSG_PREEMPT 0xa06c0105u       /* {u8 bWait, u8 bManualTimeout, u32 timeoutUs} */
#define RM_CMD_DISABLE_CHANNELS 0x2080110bu  /* on the subdevice; 536-byte params */

#define RTLD_NEXT_HANDLE RTLD_NEXT

#endif
