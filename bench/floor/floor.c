/*
 * floor.c: a lower bound for one `hako run`-like container on this host.
 *
 * The kernel work of one `hako run --rootfs DIR -- /bin/true`, written as plainly as possible
 * in C and linked statically: three v1 cgroups (cpu, memory, pids) with two limits, a clone
 * with new pid, mount, UTS, IPC, network and cgroup namespaces, the join of the cgroups, a
 * read-only bind of the root with /proc, a /dev tmpfs and a /tmp tmpfs, pivot_root, `lo` up,
 * execve, wait, rmdir. No capability drop, no seccomp, no device nodes, no rlimits, no error
 * reporting: whatever a real runtime adds comes on top. cgroup v1 only (the project's test
 * host); run as root.
 *
 *   gcc -O2 -static -o /tmp/floor bench/floor/floor.c
 *   hyperfine -N -w 20 -r 300 '/tmp/floor /tmp/m/rootfs' \
 *     'target/release/hako run --rootfs /tmp/m/rootfs -- /bin/true'
 *
 * See docs/benchmarks.md ("A floor") for the figures.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *controllers[3] = {"cpu", "memory", "pids"};
static int procs[3];
static const char *root;

static int child(void *unused) {
    (void)unused;
    char p[4096];
    for (int i = 0; i < 3; i++)
        if (write(procs[i], "0", 1) != 1) _exit(120);
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    mount(root, root, NULL, MS_BIND | MS_REC, NULL);
    snprintf(p, sizeof p, "%s/proc", root);
    mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    snprintf(p, sizeof p, "%s/dev", root);
    mount("tmpfs", p, "tmpfs", MS_NOSUID, "mode=755,size=64k");
    snprintf(p, sizeof p, "%s/tmp", root);
    mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m");
    mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
    if (chdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0) _exit(121);
    umount2(".", MNT_DETACH);
    if (chdir("/") != 0) _exit(122);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq r;
    memset(&r, 0, sizeof r);
    strcpy(r.ifr_name, "lo");
    ioctl(s, SIOCGIFFLAGS, &r);
    r.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &r);
    close(s);
    char *argv[] = {"/bin/true", NULL};
    char *envp[] = {NULL};
    execve("/bin/true", argv, envp);
    _exit(127);
}

int main(int argc, char **argv) {
    static char stack[65536];
    char dirs[3][256], f[320];
    root = argc > 1 ? argv[1] : "/tmp/m/rootfs";
    for (int i = 0; i < 3; i++) {
        snprintf(dirs[i], sizeof dirs[i], "/sys/fs/cgroup/%s/floor-%d", controllers[i], getpid());
        if (mkdir(dirs[i], 0755) != 0) return 100;
    }
    snprintf(f, sizeof f, "%s/memory.limit_in_bytes", dirs[1]);
    int fd = open(f, O_WRONLY);
    if (fd < 0 || write(fd, "268435456", 9) != 9) return 101;
    close(fd);
    snprintf(f, sizeof f, "%s/pids.max", dirs[2]);
    fd = open(f, O_WRONLY);
    if (fd < 0 || write(fd, "512", 3) != 3) return 102;
    close(fd);
    for (int i = 0; i < 3; i++) {
        snprintf(f, sizeof f, "%s/cgroup.procs", dirs[i]);
        procs[i] = open(f, O_WRONLY | O_CLOEXEC);
    }
    int pid = clone(child, stack + sizeof stack,
                    CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET |
                        CLONE_NEWCGROUP | SIGCHLD,
                    NULL);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    for (int i = 0; i < 3; i++) {
        close(procs[i]);
        while (rmdir(dirs[i]) != 0 && errno == EBUSY) {
        }
    }
    return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
