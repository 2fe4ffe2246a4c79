/* The slice of the NVIDIA resource-manager ioctl ABI that the fake RM emulates and
 * the fake libcuda speaks. Layouts follow open-gpu-kernel-modules' nvos.h and the
 * byte offsets measured on an H100 (shared/notes/rm-controls.md); the static
 * asserts below are the contract both sides rely on. */
#ifndef GVM_FAKE_RM_ABI_H
#define GVM_FAKE_RM_ABI_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#define RM_IOCTL_TYPE 'F'
#define RM_NR_FREE 0x29
#define RM_NR_CONTROL 0x2A
#define RM_NR_ALLOC 0x2B

#define RM_CLASS_ROOT 0x0041u
#define RM_CLASS_DEVICE 0x0080u
#define RM_CLASS_SUBDEVICE 0x2080u
#define RM_CLASS_TSG 0xA06Cu
#define RM_CLASS_CTXSHARE 0x9067u
#define RM_CLASS_CHANNEL 0xC86Fu
/* Every GPFIFO channel class ends in 0x6F, whatever the GPU generation. */
#define RM_IS_CHANNEL_CLASS(c) (((c) & 0xFFu) == 0x6Fu)

#define RM_ENGINE_GR 1u
#define RM_ENGINE_COPY0 11u

#define RM_CMD_TSG_SCHEDULE 0xa06c0101u /* {u8 bEnable, u8 bSkipSubmit, u8 bSkipEnable} */
#define RM_CMD_CHANNEL_SCHEDULE 0xa06f0103u /* {u8 bEnable, u8 bSkipSubmit} */
#define RM_CMD_TSG_SET_TIMESLICE 0xa06c0103u
#define RM_CMD_TSG_GET_TIMESLICE 0xa06c0104u
#define RM_CMD_TSG_PREEMPT 0xa06c0105u
#define RM_CMD_DISABLE_CHANNELS 0x2080110bu

#define NV_OK 0x00u
#define NV_ERR_INVALID_ARGUMENT 0x1Fu
#define NV_ERR_INVALID_CHANNEL 0x21u
#define NV_ERR_INVALID_OBJECT_HANDLE 0x33u
#define NV_ERR_NOT_SUPPORTED 0x56u
#define NV_ERR_OBJECT_NOT_FOUND 0x57u

typedef struct {
    uint32_t hRoot;
    uint32_t hObjectParent;
    uint32_t hObjectNew;
    uint32_t hClass;
    uint64_t pAllocParms;
    uint32_t paramsSize;
    uint32_t status;
} rm_nvos21_t;

typedef struct {
    uint32_t hRoot;
    uint32_t hObjectParent;
    uint32_t hObjectNew;
    uint32_t hClass;
    uint64_t pAllocParms;
    uint64_t pRightsRequested;
    uint32_t paramsSize;
    uint32_t flags;
    uint32_t status;
} rm_nvos64_t;

typedef struct {
    uint32_t hClient;
    uint32_t hObject;
    uint32_t cmd;
    uint32_t flags;
    uint64_t params;
    uint32_t paramsSize;
    uint32_t status;
} rm_nvos54_t;

typedef struct {
    uint32_t hRoot;
    uint32_t hObjectParent;
    uint32_t hObjectOld;
    uint32_t status;
} rm_nvos00_t;

/* NV0080_ALLOC_PARAMETERS: only deviceId matters to the fake. */
typedef struct {
    uint32_t deviceId;
    uint32_t hClientShare;
    uint32_t hTargetClient;
    uint32_t hTargetDevice;
    uint32_t flags;
    uint64_t vaSpaceSize;
    uint64_t vaStartInternal;
    uint64_t vaLimitInternal;
    uint32_t vaMode;
} rm_device_alloc_t;

typedef struct {
    uint32_t subDeviceId;
} rm_subdevice_alloc_t;

/* NV_CHANNEL_GROUP_ALLOCATION_PARAMETERS: engineType is the 4th word. */
typedef struct {
    uint32_t hObjectError;
    uint32_t hObjectEccError;
    uint32_t hVASpace;
    uint32_t engineType;
    uint8_t bIsCallingContextVgpuPlugin;
    uint8_t pad[3];
} rm_tsg_alloc_t;

typedef struct {
    uint32_t hVASpace;
    uint32_t flags;
    uint32_t subctxId;
} rm_ctxshare_alloc_t;

/* A short stand-in for NV_CHANNEL_ALLOC_PARAMS; the fake reads none of it. */
typedef struct {
    uint32_t hObjectError;
    uint32_t hObjectBuffer;
    uint64_t gpFifoOffset;
    uint32_t gpFifoEntries;
    uint32_t flags;
    uint32_t hContextShare;
    uint32_t hVASpace;
} rm_channel_alloc_t;

#define RM_DISABLE_MAX_CHANNELS 64
typedef struct {
    uint8_t bDisable;
    uint32_t numChannels;
    uint8_t bOnlyDisableScheduling;
    uint8_t bRewindGpPut;
    uint64_t pRunlistPreemptEvent;
    uint32_t hClientList[RM_DISABLE_MAX_CHANNELS];
    uint32_t hChannelList[RM_DISABLE_MAX_CHANNELS];
} rm_disable_channels_t;

typedef struct {
    uint8_t bWait;
    uint8_t bManualTimeout;
    uint32_t timeoutUs;
} rm_preempt_t;

static_assert(sizeof(rm_nvos21_t) == 32, "NVOS21 is 32 bytes");
/* nvos.h gives NVOS64 44 bytes of fields padded to 48; a 40-byte struct could not
 * hold its status word, so the fake accepts 32 and 48 only. */
static_assert(sizeof(rm_nvos64_t) == 48, "NVOS64 is 48 bytes");
static_assert(offsetof(rm_nvos64_t, status) == 40, "NVOS64 status at 40");
static_assert(sizeof(rm_nvos54_t) == 32, "NVOS54 is 32 bytes");
static_assert(sizeof(rm_nvos00_t) == 16, "NVOS00 is 16 bytes");
static_assert(offsetof(rm_tsg_alloc_t, engineType) == 12, "engineType is word 4");
static_assert(sizeof(rm_disable_channels_t) == 536, "disable-channels params");
static_assert(offsetof(rm_disable_channels_t, numChannels) == 4, "numChannels");
static_assert(offsetof(rm_disable_channels_t, bOnlyDisableScheduling) == 8, "bOnly");
static_assert(offsetof(rm_disable_channels_t, bRewindGpPut) == 9, "bRewind");
static_assert(offsetof(rm_disable_channels_t, pRunlistPreemptEvent) == 16, "pEvent");
static_assert(offsetof(rm_disable_channels_t, hClientList) == 24, "hClientList");
static_assert(offsetof(rm_disable_channels_t, hChannelList) == 280, "hChannelList");
static_assert(sizeof(rm_preempt_t) == 8, "preempt params");

#endif
