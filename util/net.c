/* util/net.c — see net.h. */
#include "util/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <glib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_port(const char *s, uint16_t *port)
{
    char *end;
    if (*s == '\0') return -1;
    unsigned long v = strtoul(s, &end, 10);
    if (*end != '\0' || v > 65535 || s[0] == '-' || s[0] == '+') return -1;
    *port = (uint16_t)v;
    return 0;
}

int net_parse_listen(const char *spec, struct sockaddr_storage *out, char **err)
{
    char host[64];
    const char *port_s;
    memset(out, 0, sizeof *out);
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':' || (size_t)(close - spec - 1) >= sizeof host) goto bad;
        memcpy(host, spec + 1, (size_t)(close - spec - 1));
        host[close - spec - 1] = '\0';
        port_s = close + 2;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
        a6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1) goto bad;
        uint16_t port;
        if (parse_port(port_s, &port) < 0) goto bad;
        a6->sin6_port = htons(port);
        return 0;
    }
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host) goto bad;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    uint16_t port;
    if (parse_port(colon + 1, &port) < 0) goto bad;
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    if (strcmp(host, "*") == 0 || strcmp(host, "") == 0) {
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
        return 0;
    }
    if (strcmp(host, "localhost") == 0) {
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return 0;
    }
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) goto bad;
    return 0;
bad:
    *err = g_strdup_printf("\"%s\" is not HOST:PORT (numeric IPv4, [IPv6], localhost or *; port 0-65535)",
                           spec);
    return -1;
}

void net_format_ip(const struct sockaddr *sa, char *out, size_t outsz)
{
    const void *addr = sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                                                 : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (!inet_ntop(sa->sa_family, addr, out, (socklen_t)outsz)) snprintf(out, outsz, "unknown");
}

void net_format(const struct sockaddr *sa, char *out, size_t outsz)
{
    char ip[INET6_ADDRSTRLEN];
    net_format_ip(sa, ip, sizeof ip);
    if (sa->sa_family == AF_INET6)
        snprintf(out, outsz, "[%s]:%u", ip, ntohs(((const struct sockaddr_in6 *)sa)->sin6_port));
    else
        snprintf(out, outsz, "%s:%u", ip, ntohs(((const struct sockaddr_in *)sa)->sin_port));
}

void net_client_key(const struct sockaddr *sa, unsigned v6_prefix, char *out, size_t outsz)
{
    if (sa->sa_family != AF_INET6) {
        net_format_ip(sa, out, outsz);
        return;
    }
    struct in6_addr a = ((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
        if (!inet_ntop(AF_INET, &a.s6_addr[12], out, (socklen_t)outsz)) snprintf(out, outsz, "unknown");
        return;
    }
    if (v6_prefix > 128) v6_prefix = 128;
    for (unsigned bit = v6_prefix; bit < 128; bit++) a.s6_addr[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
    char ip[INET6_ADDRSTRLEN];
    if (!inet_ntop(AF_INET6, &a, ip, sizeof ip)) snprintf(ip, sizeof ip, "unknown");
    if (v6_prefix == 128) snprintf(out, outsz, "%s", ip);
    else snprintf(out, outsz, "%s/%u", ip, v6_prefix);
}

bool net_is_wildcard(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
}

int net_listen(const char *spec, int *fd_out, char **err)
{
    struct sockaddr_storage ss;
    if (net_parse_listen(spec, &ss, err) < 0) return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (fd < 0) goto fail;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 511) < 0) goto fail;
    *fd_out = fd;
    return 0;
fail:
    *err = g_strdup_printf("cannot listen on %s: %s", spec, g_strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
}
