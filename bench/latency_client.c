/* bench/latency_client.c — an open-loop, paced SMTP sender for bench/latency (a benchmark tool, not a
 * test).
 *
 *   build/bench/latency-client -p PORT -r RATE -n COUNT [-s SESSIONS] [-l SIZE] [-m FILE -f FROM -t TO -e HELO] -o OUT
 *
 * Opens SESSIONS connections to 127.0.0.1:PORT (EHLO once each), then sends COUNT messages of SIZE
 * bytes (headers included), message i due at start + i / RATE whatever the server does (open loop:
 * a slow reply does not slow the schedule; a message starts on the first idle connection, and if
 * none is idle when it is due it starts as soon as one is, which the output shows as lateness).
 * Each message is MAIL, RCPT, DATA and the body, one command at a time, on a connection kept open.
 * Message i carries `Message-Id: <latseq-<i, ten digits>@bench.example>`, which bench/webhook-sink
 * finds in the POST.  With -m FILE, every message is FILE's bytes as they are instead (CRLF lines,
 * dot-stuffed, without the final dot: a signed message that must not change), from FROM to TO (the
 * envelope; sender@example.org to rcpt@example.com otherwise), after EHLO HELO (latency.bench);
 * bench/senderauth sends its signed message this way.
 *
 * OUT gets one line per message: `seq due_ns start_ns dot_ns reply_ns code`, CLOCK_MONOTONIC
 * nanoseconds: when it was due, when its MAIL was written, when the last byte of its final
 * "\r\n.\r\n" was handed to the kernel (write() returned), when the reply to the dot was read.
 * Exit 0 when every message got a 250, 1 otherwise, 2 on bad arguments.  Bounded: every wait is
 * capped by a deadline (COUNT / RATE + 60 s), only loopback is used. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define SESSIONS_MAX 256
#define REPLY_MAX 4096
#define SEQ_DIGITS 10
#define ADDR_MAX 200 /* -f, -t, -e */

enum conn_state { C_GREETING, C_EHLO, C_IDLE, C_MAIL, C_RCPT, C_DATA, C_BODY, C_DOT, C_DEAD };

struct conn {
    int fd;
    enum conn_state state;
    char reply[REPLY_MAX];
    size_t reply_len;
    const char *out;    /* bytes still to write (a command or the message) */
    char cmd[ADDR_MAX + 16]; /* the command in flight: out may point into it until it is written */
    size_t out_len;
    char *msg;          /* this connection's copy of the message, its sequence digits rewritten */
    size_t seq_at;      /* where the digits are in msg */
    size_t seq_at2;
    long seq;           /* the message in flight, or -1 */
};

struct sample {
    int64_t due, start, dot, reply;
    int code;
};

struct opts {
    int port, sessions;
    double rate;
    long count;
    size_t size;
    const char *out;
    const char *file; /* -m: the message as it is, or NULL */
    const char *from, *to, *helo;
};

#define SEQ_NONE ((size_t)-1) /* a message from -m: no sequence digits to write */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The message: headers with two ten-digit sequence fields, then 76-byte lines of filler up to
 * `size` bytes, then the final dot. */
static char *message_new(size_t size, size_t *len, size_t *seq_at, size_t *seq_at2)
{
    static const char head[] = "From: <sender@example.org>\r\nTo: <rcpt@example.com>\r\n"
                               "Subject: latency 0000000000\r\n"
                               "Message-Id: <latseq-0000000000@bench.example>\r\n\r\n";
    size_t hlen = sizeof head - 1, n;
    char *m = malloc(size + hlen + 128);
    if (!m)
        return NULL;
    memcpy(m, head, hlen);
    *seq_at = (size_t)(strstr(m, "latency ") - m) + 8;
    *seq_at2 = (size_t)(strstr(m, "latseq-") - m) + 7;
    n = hlen;
    while (n + 78 <= size) {
        memset(m + n, 'x', 76);
        m[n + 76] = '\r';
        m[n + 77] = '\n';
        n += 78;
    }
    memcpy(m + n, "end\r\n.\r\n", 8);
    *len = n + 8;
    return m;
}

/* A complete reply in c->reply (its last line "NNN " + text + CRLF): its code, and the bytes it
 * took; 0 when more bytes are needed. */
static size_t reply_complete(const struct conn *c, int *code)
{
    size_t line = 0;
    for (size_t i = 0; i + 1 < c->reply_len; i++) {
        if (c->reply[i] != '\r' || c->reply[i + 1] != '\n')
            continue;
        const char *l = c->reply + line;
        if (i - line >= 4 && l[3] == ' ' && l[0] >= '1' && l[0] <= '5' && l[1] >= '0' &&
            l[1] <= '9' && l[2] >= '0' && l[2] <= '9') {
            *code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
            return i + 2;
        }
        line = i + 2;
    }
    return 0;
}

static int conn_write(struct conn *c)
{
    while (c->out_len > 0) {
        ssize_t w = write(c->fd, c->out, c->out_len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w <= 0)
            return -1;
        c->out += w;
        c->out_len -= (size_t)w;
    }
    return 0;
}

static void conn_send(struct conn *c, const char *s, size_t n)
{
    c->out = s;
    c->out_len = n;
    if (conn_write(c) < 0)
        c->state = C_DEAD;
}

/* FILE's bytes and the final dot (malloc'd), or NULL. */
static char *message_from_file(const char *path, size_t *len, size_t *seq_at, size_t *seq_at2)
{
    FILE *f = fopen(path, "rb");
    char *m = NULL;
    long n;

    if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        !(m = malloc((size_t)n + 8)) || fread(m, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        free(m);
        if (f)
            fclose(f);
        return NULL;
    }
    fclose(f);
    memcpy(m + n, ".\r\n", 3);
    *len = (size_t)n + 3;
    *seq_at = *seq_at2 = SEQ_NONE;
    return m;
}

static const struct opts *options;

static void conn_start(struct conn *c, long seq, struct sample *s, int64_t now)
{
    long v = seq;   /* < 10^8 (parse_opts), so ten digits hold it */
    for (int i = SEQ_DIGITS - 1; c->seq_at != SEQ_NONE && i >= 0; i--, v /= 10) {
        c->msg[c->seq_at + (size_t)i] = (char)('0' + v % 10);
        c->msg[c->seq_at2 + (size_t)i] = (char)('0' + v % 10);
    }
    c->seq = seq;
    c->state = C_MAIL;
    s->start = now;
    conn_send(c, c->cmd, (size_t)snprintf(c->cmd, sizeof c->cmd, "MAIL FROM:<%s>\r\n", options->from));
}

/* One reply has come: the next step of the transaction.  Returns 1 when a message ended. */
static int conn_on_reply(struct conn *c, int code, struct sample *samples, size_t msg_len)
{
    switch (c->state) {
    case C_GREETING:
        if (code != 220)
            break;
        c->state = C_EHLO;
        conn_send(c, c->cmd, (size_t)snprintf(c->cmd, sizeof c->cmd, "EHLO %s\r\n", options->helo));
        return 0;
    case C_EHLO:
        if (code != 250)
            break;
        c->state = C_IDLE;
        return 0;
    case C_MAIL:
        if (code != 250)
            break;
        c->state = C_RCPT;
        conn_send(c, c->cmd, (size_t)snprintf(c->cmd, sizeof c->cmd, "RCPT TO:<%s>\r\n", options->to));
        return 0;
    case C_RCPT:
        if (code != 250)
            break;
        c->state = C_DATA;
        conn_send(c, "DATA\r\n", 6);
        return 0;
    case C_DATA:
        if (code != 354)
            break;
        c->state = C_BODY;
        conn_send(c, c->msg, msg_len);
        if (c->state == C_BODY && c->out_len == 0) {
            samples[c->seq].dot = now_ns();
            c->state = C_DOT;
        }
        return 0;
    case C_DOT:
        samples[c->seq].reply = now_ns();
        samples[c->seq].code = code;
        c->seq = -1;
        c->state = code == 250 ? C_IDLE : C_DEAD;
        return 1;
    default:
        break;
    }
    fprintf(stderr, "latency-client: unexpected reply %d in state %d\n", code, (int)c->state);
    if (c->seq >= 0) {
        samples[c->seq].code = code;
        c->seq = -1;
        c->state = C_DEAD;
        return 1;
    }
    c->state = C_DEAD;
    return 0;
}

/* Readable: every complete reply in the buffer, in order.  Returns the messages that ended. */
static int conn_read(struct conn *c, struct sample *samples, size_t msg_len)
{
    int ended = 0, code;
    ssize_t r = read(c->fd, c->reply + c->reply_len, sizeof c->reply - c->reply_len);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0) {
        fprintf(stderr, "latency-client: connection closed in state %d\n", (int)c->state);
        if (c->seq >= 0) {
            samples[c->seq].code = -1;
            ended = 1;
        }
        c->state = C_DEAD;
        return ended;
    }
    c->reply_len += (size_t)r;
    for (size_t used; c->state != C_DEAD && (used = reply_complete(c, &code)) > 0;) {
        memmove(c->reply, c->reply + used, c->reply_len - used);
        c->reply_len -= used;
        ended += conn_on_reply(c, code, samples, msg_len);
    }
    if (c->reply_len == sizeof c->reply)
        c->state = C_DEAD;   /* a reply longer than any SMTP server sends */
    return ended;
}

static int conn_open(struct conn *c, int port, size_t size)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int one = 1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(c, 0, sizeof *c);
    c->seq = -1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(c->fd);
        return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->state = C_GREETING;
    size_t len;
    c->msg = options->file ? message_from_file(options->file, &len, &c->seq_at, &c->seq_at2)
                           : message_new(size, &len, &c->seq_at, &c->seq_at2);
    if (!c->msg) {
        close(c->fd);
        return -1;
    }
    return 0;
}

/* A whole decimal number in [1, max], or -1. */
static long number(const char *s, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || end == s || *end || v < 1 || v > max ? -1 : v;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    int ch;
    *o = (struct opts){ .sessions = 20, .size = 2048, .from = "sender@example.org", .to = "rcpt@example.com",
                         .helo = "latency.bench" };
    while ((ch = getopt(argc, argv, "p:r:n:s:l:o:m:f:t:e:")) != -1) {
        switch (ch) {
        case 'p': o->port = (int)number(optarg, 65535); break;
        case 'r': o->rate = strtod(optarg, NULL); break;
        case 'n': o->count = number(optarg, 100000000); break;
        case 's': o->sessions = (int)number(optarg, SESSIONS_MAX); break;
        case 'l': o->size = (size_t)number(optarg, 1L << 30); break;
        case 'o': o->out = optarg; break;
        case 'm': o->file = optarg; break;
        case 'f': o->from = optarg; break;
        case 't': o->to = optarg; break;
        case 'e': o->helo = optarg; break;
        default: return -1;
        }
    }
    if (o->port <= 0 || o->rate <= 0 || o->count <= 0 || o->sessions <= 0 ||
        o->sessions > SESSIONS_MAX || (long)o->size < 256 || !o->out || strlen(o->from) > ADDR_MAX ||
        strlen(o->to) > ADDR_MAX || strlen(o->helo) > ADDR_MAX)
        return -1;
    return 0;
}

/* The event loop: start messages as they fall due, drive every connection, until every message
 * ended or the deadline passed.  Returns the messages that ended. */
static long run(const struct opts *o, struct conn *conns, struct sample *samples, size_t msg_len,
                int64_t t0, int64_t deadline)
{
    struct pollfd pfd[SESSIONS_MAX];
    long next = 0, ended = 0;
    int64_t interval = (int64_t)(1e9 / o->rate);
    while (ended < o->count && now_ns() < deadline) {
        int64_t now = now_ns();
        for (int i = 0; i < o->sessions && next < o->count && t0 + next * interval <= now; i++) {
            if (conns[i].state != C_IDLE)
                continue;
            samples[next].due = t0 + next * interval;
            conn_start(&conns[i], next, &samples[next], now);
            next++;
        }
        int64_t wait = 50000000;   /* 50 ms at most, so the deadline is seen */
        int idle = 0;
        for (int i = 0; i < o->sessions; i++)
            idle += conns[i].state == C_IDLE;
        /* The next message's due time matters only when a connection could start it: with none
         * idle (a rate above what the server takes) the loop waits for replies, not spins. */
        if (idle && next < o->count && t0 + next * interval - now < wait)
            wait = t0 + next * interval - now;
        if (wait < 0)
            wait = 0;
        for (int i = 0; i < o->sessions; i++) {
            pfd[i].fd = conns[i].state == C_DEAD ? -1 : conns[i].fd;
            pfd[i].events = POLLIN | (conns[i].out_len ? POLLOUT : 0);
        }
        struct timespec ts = { .tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000 };
        if (ppoll(pfd, (nfds_t)o->sessions, &ts, NULL) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < o->sessions; i++) {
            struct conn *c = &conns[i];
            if (c->state == C_DEAD)
                continue;
            if ((pfd[i].revents & POLLOUT) && c->out_len) {
                if (conn_write(c) < 0) {
                    c->state = C_DEAD;
                } else if (c->state == C_BODY && c->out_len == 0) {
                    samples[c->seq].dot = now_ns();
                    c->state = C_DOT;
                }
            }
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                ended += conn_read(c, samples, msg_len);
        }
        int alive = 0;
        for (int i = 0; i < o->sessions; i++)
            alive += conns[i].state != C_DEAD;
        if (!alive)
            break;
    }
    return ended;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct conn conns[SESSIONS_MAX];
    struct sample *samples = NULL;
    size_t msg_len = 0, a, b;
    int rc = 1, n = 0;
    FILE *out = NULL;

    if (parse_opts(argc, argv, &o) < 0) {
        fprintf(stderr, "usage: latency-client -p PORT -r RATE -n COUNT [-s SESSIONS] [-l SIZE]"
                        " [-m FILE -f FROM -t TO -e HELO] -o OUT\n");
        return 2;
    }
    options = &o;
    signal(SIGPIPE, SIG_IGN);
    free(o.file ? message_from_file(o.file, &msg_len, &a, &b) : message_new(o.size, &msg_len, &a, &b));
    if (!msg_len)
        return 2;
    samples = calloc((size_t)o.count, sizeof *samples);
    if (!samples)
        goto out;
    for (; n < o.sessions; n++) {
        if (conn_open(&conns[n], o.port, o.size) < 0) {
            perror("latency-client: connect");
            goto out;
        }
    }
    /* The greetings and EHLOs first, then the schedule starts. */
    int64_t ready_by = now_ns() + 10 * (int64_t)1000000000;
    for (int ready = 0; ready < o.sessions && now_ns() < ready_by;) {
        struct pollfd p[SESSIONS_MAX];
        for (int i = 0; i < o.sessions; i++)
            p[i] = (struct pollfd){ .fd = conns[i].state == C_IDLE ? -1 : conns[i].fd, .events = POLLIN };
        poll(p, (nfds_t)o.sessions, 100);
        ready = 0;
        for (int i = 0; i < o.sessions; i++) {
            if (p[i].revents)
                conn_read(&conns[i], samples, msg_len);
            ready += conns[i].state == C_IDLE;
        }
    }
    int64_t t0 = now_ns() + 10000000;
    int64_t deadline = t0 + (int64_t)((double)o.count / o.rate * 1e9) + 60 * (int64_t)1000000000;
    long ended = run(&o, conns, samples, msg_len, t0, deadline);
    out = fopen(o.out, "w");
    if (!out)
        goto out;
    long ok = 0;
    for (long i = 0; i < o.count; i++) {
        fprintf(out, "%ld %lld %lld %lld %lld %d\n", i, (long long)samples[i].due,
                (long long)samples[i].start, (long long)samples[i].dot, (long long)samples[i].reply,
                samples[i].code);
        ok += samples[i].code == 250;
    }
    fprintf(stderr, "latency-client: %ld of %ld messages ended, %ld with 250\n", ended, o.count, ok);
    rc = ok == o.count ? 0 : 1;
out:
    if (out && fclose(out) != 0)
        rc = 1;
    for (int i = 0; i < n; i++) {
        close(conns[i].fd);
        free(conns[i].msg);
    }
    free(samples);
    return rc;
}
