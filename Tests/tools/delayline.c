/*
 * delayline: a long fat path in user space, for tests and benchmarks on a kernel without netem.
 *
 *   delayline LISTEN_PORT UPSTREAM_PORT RTT_MS RATE_MBIT [HOLD_BYTES]
 *
 * Every connection to 127.0.0.1:LISTEN_PORT is relayed to 127.0.0.1:UPSTREAM_PORT. Each direction is one
 * bottleneck link: a chunk leaves the bottleneck at RATE_MBIT (after the chunks before it) and arrives RTT_MS/2
 * later. A direction holds at most HOLD_BYTES (default 1.5 x the bandwidth-delay product, RATE x RTT), in the
 * bottleneck queue and on the wire together; when full it stops reading, so the sender meets back-pressure as
 * on a real path (a TCP relay cannot drop). The relay's own socket buffers are kept small so they do not add
 * a second, hidden queue.
 *
 * Prints "ready PORT" on stdout once it listens. Two threads per direction: a reader that stamps and queues,
 * a writer that sleeps until each chunk's time. Stop it with SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CHUNK = 64 * 1024, SOCKBUF = 256 * 1024 };

static double one_way_s, rate_bytes_per_s;
static size_t hold_limit;

struct chunk {
    struct chunk *next;
    double due;          /* when it arrives at the far end */
    size_t len;          /* 0: end of stream */
    char data[];
};

struct direction {
    int from, to;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct chunk *head, *tail;
    size_t held;
    double bottleneck_free;   /* when the bottleneck finishes sending what it has */
    int dead;
    struct link *link;
};

struct link {
    struct direction dir[2];
    pthread_mutex_t lock;
    int finished;        /* directions done; the last one closes both sockets */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    double wait = t - now_s();
    if (wait <= 0) return;
    struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
    nanosleep(&ts, NULL);
}

static void direction_done(struct direction *d) {
    struct link *l = d->link;
    pthread_mutex_lock(&l->lock);
    int last = ++l->finished == 4;
    pthread_mutex_unlock(&l->lock);
    if (last) {
        close(l->dir[0].from);
        close(l->dir[0].to);
        free(l);
    }
}

static void kill_direction(struct direction *d) {
    pthread_mutex_lock(&d->lock);
    d->dead = 1;
    pthread_cond_broadcast(&d->changed);
    pthread_mutex_unlock(&d->lock);
}

static void *reader(void *arg) {
    struct direction *d = arg;
    for (;;) {
        struct chunk *c = malloc(sizeof(struct chunk) + CHUNK);
        ssize_t n = recv(d->from, c->data, CHUNK, 0);
        if (n < 0 && errno == EINTR) { free(c); continue; }
        c->len = n > 0 ? (size_t)n : 0;
        c->next = NULL;
        pthread_mutex_lock(&d->lock);
        while (!d->dead && d->held > 0 && d->held + c->len > hold_limit)
            pthread_cond_wait(&d->changed, &d->lock);
        if (d->dead) {
            pthread_mutex_unlock(&d->lock);
            free(c);
            break;
        }
        double t = now_s();
        double start = d->bottleneck_free > t ? d->bottleneck_free : t;
        d->bottleneck_free = start + (double)c->len / rate_bytes_per_s;
        c->due = d->bottleneck_free + one_way_s;
        if (d->tail) d->tail->next = c; else d->head = c;
        d->tail = c;
        d->held += c->len;
        pthread_cond_broadcast(&d->changed);
        pthread_mutex_unlock(&d->lock);
        if (n <= 0) break;   /* EOF (or error): queued as the end of the stream */
    }
    direction_done(d);
    return NULL;
}

static void *writer(void *arg) {
    struct direction *d = arg;
    for (;;) {
        pthread_mutex_lock(&d->lock);
        while (!d->dead && d->head == NULL) pthread_cond_wait(&d->changed, &d->lock);
        if (d->dead) { pthread_mutex_unlock(&d->lock); break; }
        struct chunk *c = d->head;
        pthread_mutex_unlock(&d->lock);
        sleep_until(c->due);
        int failed = 0;
        if (c->len == 0) {
            shutdown(d->to, SHUT_WR);
        } else {
            size_t off = 0;
            while (off < c->len) {
                ssize_t n = send(d->to, c->data + off, c->len - off, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) { failed = 1; break; }
                off += (size_t)n;
            }
        }
        pthread_mutex_lock(&d->lock);
        d->head = c->next;
        if (!d->head) d->tail = NULL;
        d->held -= c->len;
        pthread_cond_broadcast(&d->changed);
        pthread_mutex_unlock(&d->lock);
        int end = c->len == 0;
        free(c);
        if (failed) {
            /* The far side is gone: the whole link goes (both directions, both sockets). */
            struct link *l = d->link;
            shutdown(l->dir[0].from, SHUT_RDWR);
            shutdown(l->dir[0].to, SHUT_RDWR);
            kill_direction(&l->dir[0]);
            kill_direction(&l->dir[1]);
            break;
        }
        if (end) break;
    }
    direction_done(d);
    return NULL;
}

static void small_buffers(int fd) {
    int size = SOCKBUF, one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: delayline LISTEN_PORT UPSTREAM_PORT RTT_MS RATE_MBIT [HOLD_BYTES]\n");
        return 64;
    }
    int listen_port = atoi(argv[1]), upstream_port = atoi(argv[2]);
    double rtt_ms = atof(argv[3]), rate_mbit = atof(argv[4]);
    if (rate_mbit <= 0 || rtt_ms < 0) {
        fprintf(stderr, "delayline: RATE_MBIT must be > 0 and RTT_MS >= 0\n");
        return 64;
    }
    one_way_s = rtt_ms / 2000.0;
    rate_bytes_per_s = rate_mbit * 1e6 / 8.0;
    double bdp = rate_bytes_per_s * rtt_ms / 1000.0;
    hold_limit = argc > 5 ? (size_t)atoll(argv[5]) : (size_t)(1.5 * bdp);
    if (hold_limit < CHUNK) hold_limit = CHUNK;
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int size = SOCKBUF;
    setsockopt(ls, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);   /* inherited by accepted sockets */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 128) < 0) {
        perror("delayline: listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(ls, (struct sockaddr *)&addr, &alen);
    printf("ready %d hold %zu\n", ntohs(addr.sin_port), hold_limit);
    fflush(stdout);

    for (;;) {
        int a = accept(ls, NULL, NULL);
        if (a < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) { usleep(100000); continue; }
            perror("delayline: accept");
            return 1;
        }
        int b = socket(AF_INET, SOCK_STREAM, 0);
        small_buffers(a);
        small_buffers(b);
        struct sockaddr_in up = {.sin_family = AF_INET, .sin_port = htons((uint16_t)upstream_port)};
        up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(b, (struct sockaddr *)&up, sizeof up) < 0) {
            close(a);
            close(b);
            continue;
        }
        struct link *l = calloc(1, sizeof *l);
        pthread_mutex_init(&l->lock, NULL);
        for (int i = 0; i < 2; i++) {
            struct direction *d = &l->dir[i];
            d->from = i == 0 ? a : b;
            d->to = i == 0 ? b : a;
            d->link = l;
            pthread_mutex_init(&d->lock, NULL);
            pthread_cond_init(&d->changed, NULL);
        }
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        for (int i = 0; i < 2; i++) {
            pthread_t t;
            pthread_create(&t, &attr, reader, &l->dir[i]);
            pthread_create(&t, &attr, writer, &l->dir[i]);
        }
        pthread_attr_destroy(&attr);
    }
}
