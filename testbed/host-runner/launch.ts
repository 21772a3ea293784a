/**
 * Pure translation of a pod's container into the host commands that run it: a private mount
 * namespace, each volume (or its subPath) bind-mounted at its mountPath, a private /dev carrying the
 * termination-message file, and `setpriv` with exactly the user, groups and capabilities the
 * pod's securityContext grants.
 */
import type { V1Container, V1Pod } from '@kubernetes/client-node';

/** The capabilities a container runtime grants when a container drops none (containerd's defaults). */
export const RuntimeDefaultCapabilities = [
  'CHOWN',
  'DAC_OVERRIDE',
  'FSETID',
  'FOWNER',
  'MKNOD',
  'NET_RAW',
  'SETGID',
  'SETUID',
  'SETFCAP',
  'SETPCAP',
  'NET_BIND_SERVICE',
  'SYS_CHROOT',
  'KILL',
  'AUDIT_WRITE',
] as const;

/** A host directory (or file) to bind at a path inside the container. */
export interface HostMount {
  /** The volume's host directory. */
  source: string;
  /** The folder of the volume to bind instead of its root (a volumeMount's `subPath`). */
  subPath?: string;
  target: string;
  readOnly: boolean;
}

/** The identity a container's process runs as. */
export interface ContainerIdentity {
  uid: number;
  gid: number;
  groups: number[];
  capabilities: string[];
  noNewPrivileges: boolean;
  runAsNonRoot: boolean;
}

const capName = (c: string) => c.toUpperCase().replace(/^CAP_/, '');

/** Resolves the effective user, groups and capabilities of a container, as a kubelet would. */
export function identityOf(pod: V1Pod, container: V1Container): ContainerIdentity {
  const podSc = pod.spec?.securityContext ?? {};
  const sc = container.securityContext ?? {};
  const uid = sc.runAsUser ?? podSc.runAsUser ?? 0;
  const gid = sc.runAsGroup ?? podSc.runAsGroup ?? 0;
  const groups = [
    ...new Set([
      ...(podSc.fsGroup !== undefined ? [podSc.fsGroup] : []),
      ...(podSc.supplementalGroups ?? []),
    ]),
  ];
  const drop = (sc.capabilities?.drop ?? []).map(capName);
  const add = (sc.capabilities?.add ?? []).map(capName);
  const base = drop.includes('ALL') ? [] : RuntimeDefaultCapabilities.filter((c) => !drop.includes(c));
  const capabilities = [...new Set([...base, ...add])].sort();
  return {
    uid,
    gid,
    groups,
    capabilities,
    noNewPrivileges: sc.allowPrivilegeEscalation === false,
    runAsNonRoot: (sc.runAsNonRoot ?? podSc.runAsNonRoot ?? false) === true,
  };
}

/**
 * The environment a container's command gets: a base PATH, HOSTNAME and HOME, then its `env`
 * entries — plain values and the pod's name or namespace by fieldRef; other sources are ignored.
 */
export function containerEnv(pod: V1Pod, container: V1Container): Record<string, string> {
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOSTNAME: pod.metadata!.name!,
    HOME: '/root',
  };
  for (const e of container.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = pod.metadata!.name!;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace')
      env[e.name] = pod.metadata!.namespace!;
  }
  return env;
}

/** Quotes a string for a POSIX shell. */
export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Host runner's files for one container: its scratch folder and the termination-message file. */
export interface LaunchPaths {
  scratchDir: string;
  terminationFile: string;
}

/**
 * Builds the bash script that, run under `unshare --mount --propagation private`, sets up the
 * container's view of the file system and `exec`s its command under `setpriv`.
 */
export function launchScript(
  container: V1Container,
  identity: ContainerIdentity,
  mounts: readonly HostMount[],
  env: Readonly<Record<string, string>>,
  paths: LaunchPaths,
): string {
  const q = shellQuote;
  const argv = [...(container.command ?? []), ...(container.args ?? [])];
  if (argv.length === 0)
    throw new Error(`container ${container.name} has no command: the host runner needs one`);
  const termPath = container.terminationMessagePath ?? '/dev/termination-log';
  const lines = [
    'set -eu',
    // A private /dev so the termination-message file is per container and leaves no trace on the host.
    `mkdir -p ${q(paths.scratchDir + '/hostdev')}`,
    `mount --rbind /dev ${q(paths.scratchDir + '/hostdev')}`,
    'mount -t tmpfs -o mode=755,nosuid tmpfs /dev',
    `for n in null zero full random urandom tty; do touch /dev/$n; mount --bind ${q(paths.scratchDir + '/hostdev')}/$n /dev/$n; done`,
    'ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr',
    'mkdir -p /dev/shm /dev/pts && mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm',
    `umount -l ${q(paths.scratchDir + '/hostdev')}`,
  ];
  for (const m of mounts) {
    let source = q(m.source);
    if (m.subPath) {
      // As a kubelet does: a missing subPath is created (with the volume root's mode), and one
      // that leads out of its volume (through .. or a symlink) is refused.
      lines.push(
        `root=$(realpath -e -- ${q(m.source)})`,
        `sub=$(realpath -m -- ${q(`${m.source}/${m.subPath}`)})`,
        `case "$sub/" in "$root"/*) ;; *) echo ${q(`subPath ${m.subPath} of ${m.target} leads out of its volume`)} >&2; exit 1 ;; esac`,
        'if [ ! -e "$sub" ]; then mkdir -p -- "$sub" && chmod --reference="$root" -- "$sub"; fi',
      );
      source = '"$sub"';
    }
    lines.push(`mkdir -p ${q(m.target)}`, `mount --bind ${source} ${q(m.target)}`);
    if (m.readOnly) lines.push(`mount -o remount,bind,ro ${q(m.target)}`);
  }
  lines.push(
    `mkdir -p "$(dirname ${q(termPath)})"`,
    `touch ${q(termPath)}`,
    `mount --bind ${q(paths.terminationFile)} ${q(termPath)}`,
    `chmod 0666 ${q(termPath)}`,
    `cd ${q(container.workingDir ?? '/')}`,
  );
  lines.push(`exec ${[...asContainer(identity, env), ...argv].map(q).join(' ')}`);
  return lines.join('\n') + '\n';
}

/** `setpriv … env -i …`: the user, groups, capabilities and environment a container's process gets. */
function asContainer(identity: ContainerIdentity, env: Readonly<Record<string, string>>): string[] {
  const capList = identity.capabilities.map((c) => `+${c.toLowerCase()}`).join(',');
  const caps = capList ? `-all,${capList}` : '-all';
  return [
    'setpriv',
    `--reuid=${identity.uid}`,
    `--regid=${identity.gid}`,
    identity.groups.length ? `--groups=${identity.groups.join(',')}` : '--clear-groups',
    `--inh-caps=${caps}`,
    `--bounding-set=${caps}`,
    ...(identity.noNewPrivileges ? ['--no-new-privs'] : []),
    '--',
    'env',
    '-i',
    ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
  ];
}

/**
 * The argv that runs a command in a running container, as a kubelet's exec and exec probes do:
 * in the mount namespace of the container's first process (`pid`), in its working directory
 * (`--wdns` resolves it inside that namespace), as its user with its groups, capabilities and
 * environment. The command's own words follow.
 */
export function execArgv(
  pid: number,
  container: V1Container,
  identity: ContainerIdentity,
  env: Readonly<Record<string, string>>,
): string[] {
  return [
    'nsenter',
    `--target=${pid}`,
    '--mount',
    `--wdns=${container.workingDir ?? '/'}`,
    '--',
    ...asContainer(identity, env),
  ];
}
