/*
 * A pause container's process, like Kubernetes' pause: it holds the pod's namespaces,
 * reaps zombies when it is PID 1, and exits 0 on SIGINT or SIGTERM.
 *
 * Built statically by daemon/build.rs (`cc -static -Os`) and embedded in rcd: the built-in
 * sandbox process, so pods start without pulling a pause image.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_exit_signal(int sig) {
    (void)sig;
    _exit(0);
}

static void on_sigchld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("pause (rcd)\n");
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_exit_signal;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return 2;
    }
    for (;;) {
        pause();
    }
    fprintf(stderr, "pause: pause() returned\n");
    return 42;
}
