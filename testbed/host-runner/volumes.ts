/**
 * A container's volumeMounts resolved to host directories, as a kubelet sets up volumes: a
 * PersistentVolumeClaim to its bound volume's hostPath or local path, a hostPath to itself and an
 * emptyDir to a folder of the pod's own.
 */
import { chmodSync, chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { CoreV1Api, V1Container, V1Pod } from '@kubernetes/client-node';
import type { HostMount } from './launch.js';

/**
 * The host directories to bind for a container's volumeMounts; volumes of kinds the test bed's
 * containers never read (projected tokens, config maps) are left out.
 *
 * @param podDir the pod's folder, where emptyDir volumes are created.
 */
export async function hostMounts(
  core: CoreV1Api,
  pod: V1Pod,
  container: V1Container,
  podDir: string,
): Promise<HostMount[]> {
  const mounts: HostMount[] = [];
  for (const vm of container.volumeMounts ?? []) {
    const volume = pod.spec?.volumes?.find((v) => v.name === vm.name);
    if (!volume) throw new Error(`volumeMount ${vm.name} has no volume`);
    let source: string | undefined;
    if (volume.persistentVolumeClaim) {
      const pvc = await core.readNamespacedPersistentVolumeClaim({
        name: volume.persistentVolumeClaim.claimName,
        namespace: pod.metadata!.namespace!,
      });
      if (!pvc.spec?.volumeName)
        throw new Error(`PVC ${volume.persistentVolumeClaim.claimName} is not bound`);
      const pv = await core.readPersistentVolume({ name: pvc.spec.volumeName });
      source = pv.spec?.hostPath?.path ?? pv.spec?.local?.path;
      if (!source) throw new Error(`PV ${pv.metadata?.name} has no hostPath or local path`);
    } else if (volume.hostPath) {
      source = volume.hostPath.path;
    } else if (volume.emptyDir) {
      source = join(podDir, 'volumes', vm.name);
      mkdirSync(source, { recursive: true });
      // As a kubelet makes an emptyDir: open to all (the umask would narrow mkdir's mode), and
      // with an fsGroup, owned by that group and handing it down to new files.
      chmodSync(source, 0o777);
      const fsGroup = pod.spec?.securityContext?.fsGroup;
      if (fsGroup !== undefined) {
        chownSync(source, 0, fsGroup);
        chmodSync(source, 0o2777);
      }
    } else {
      continue; // projected tokens, config maps: nothing our containers read
    }
    mounts.push({
      source,
      ...(vm.subPath ? { subPath: vm.subPath } : {}),
      target: vm.mountPath,
      readOnly: vm.readOnly ?? false,
    });
  }
  return mounts;
}

/** Retries an API read while the API server cannot be reached, as a kubelet does for volume setup. */
export async function retryWhileUnreachable<T>(fn: () => Promise<T>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      const code = (err as { code?: number }).code;
      const unreachable = /ECONNREFUSED|ECONNRESET|socket hang up|FetchError/.test(String(err));
      if (!(unreachable || (code !== undefined && code >= 500)) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
