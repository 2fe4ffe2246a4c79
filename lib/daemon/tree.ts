/**
 * gvmd's FUSE tree (native/fuse_*.cc in gvm_fuse.node): mount and unmount. The tree is served by
 * native threads; JavaScript only receives its log lines (through a thread-safe function).
 */
import { nativeFuse, NativeFuse, NativeMount } from '../native';

/** The FUSE module as this build has it: mountTree also takes the log sink. */
interface FuseTreeModule extends NativeFuse {
  mountTree(mountPoint: string, shmDir: string, allowOther: boolean, log?: (line: string) => void): NativeMount;
}

export interface MountedTree {
  readonly mountPoint: string;
  unmount(): void;
}

/**
 * Mounts the tree at `mountPoint` over the blocks in `shmDir`, with allow_other and
 * default_permissions (the kernel checks each access against the files' owners and modes).
 * Throws GvmError EGVM_IO when it cannot mount.
 */
export function mountTree(mountPoint: string, shmDir: string, log: (line: string) => void): MountedTree {
  const fuse = nativeFuse() as FuseTreeModule;
  const handle = fuse.mountTree(mountPoint, shmDir, true, log);
  let mounted = true;
  return {
    mountPoint,
    unmount(): void {
      if (!mounted) return;
      mounted = false;
      fuse.unmountTree(handle);
    },
  };
}
