/*
 * denoise_floor: the comparison programs of bench/denoise_filter.py.
 *
 *   denoise_floor floor R OUT IN    the memory-bound floor: streams IN's frames through a
 *                                   window of 2R+1 frames exactly as denoise does (edge
 *                                   frames repeated), and per output frame runs a plain loop
 *                                   that only reads the 2R+1 frames and writes one (their
 *                                   bitwise OR: no arithmetic worth the name), then writes it
 *   denoise_floor naive R OUT IN    the same I/O with the straightforward per-sample filter:
 *                                   a loop over the weights for every sample, divided by W
 *
 * IN is an 8-bit Y4M as bench/denoise_filter.py writes it (W, H, C420jpeg/C422jpeg/C444,
 * "FRAME\n" lines, well formed: this is a benchmark, not a parser). Prints one JSON line:
 * the frames written and the nanoseconds spent in the per-frame loop alone.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXR 4

static void die(const char *what) {
    fprintf(stderr, "denoise_floor: %s\n", what);
    exit(1);
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One pass: every input sample read once, every output sample written once. */
static void floor_loop(uint8_t *restrict out, uint8_t *const *in, int k, size_t n) {
    const uint8_t *restrict a = in[0], *restrict b = in[1], *restrict c = in[2];
    if (k == 3) {
        for (size_t i = 0; i < n; i++) out[i] = a[i] | b[i] | c[i];
        return;
    }
    const uint8_t *restrict d = in[3], *restrict e = in[4];
    if (k == 5) {
        for (size_t i = 0; i < n; i++) out[i] = a[i] | b[i] | c[i] | d[i] | e[i];
        return;
    }
    const uint8_t *restrict f = in[5], *restrict g = in[6];
    if (k == 7) {
        for (size_t i = 0; i < n; i++) out[i] = a[i] | b[i] | c[i] | d[i] | e[i] | f[i] | g[i];
        return;
    }
    const uint8_t *restrict h = in[7], *restrict m = in[8];
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] | b[i] | c[i] | d[i] | e[i] | f[i] | g[i] | h[i] | m[i];
}

static void naive_loop(uint8_t *out, uint8_t *const *in, const int *w, int k, int total,
                       size_t n) {
    for (size_t i = 0; i < n; i++) {
        int acc = 0;
        for (int j = 0; j < k; j++) acc += w[j] * in[j][i];
        out[i] = (uint8_t)((acc + total / 2) / total);
    }
}

static int read_frame(FILE *f, uint8_t *buf, size_t n) {
    char line[64];
    if (!fgets(line, sizeof line, f)) return 0;
    if (strncmp(line, "FRAME", 5)) die("bad frame header");
    if (fread(buf, 1, n, f) != n) die("truncated frame");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) die("usage: denoise_floor floor|naive R OUT IN");
    int naive = !strcmp(argv[1], "naive");
    int r = atoi(argv[2]);
    if (r < 1 || r > MAXR) die("R is 1..4");
    int k = 2 * r + 1, w[2 * MAXR + 1], total = 0;
    for (int j = 0; j < k; j++) { /* C(2r, j) */
        long c = 1;
        for (int m = 0; m < j; m++) c = c * (2 * r - m) / (m + 1);
        w[j] = (int)c;
        total += w[j];
    }
    FILE *in = fopen(argv[4], "rb"), *out = fopen(argv[3], "wb");
    if (!in || !out) die("cannot open a file");
    char header[1024];
    if (!fgets(header, sizeof header, in)) die("no header");
    unsigned long width = 0, height = 0;
    int sx = 2, sy = 2;
    for (char *t = strtok(header + 10, " \n"); t; t = strtok(NULL, " \n")) {
        if (t[0] == 'W') width = strtoul(t + 1, NULL, 10);
        if (t[0] == 'H') height = strtoul(t + 1, NULL, 10);
        if (!strncmp(t, "C422", 4)) sy = 1;
        if (!strncmp(t, "C444", 4)) sx = sy = 1;
    }
    size_t n = width * height + 2 * ((width + sx - 1) / sx) * ((height + sy - 1) / sy);
    fprintf(out, "YUV4MPEG2 W%lu H%lu\n", width, height);
    uint8_t *pool[2 * MAXR + 1], *win[2 * MAXR + 1];
    for (int j = 0; j < k; j++)
        if (!(pool[j] = malloc(n))) die("out of memory");
    /* The output frame behind its "FRAME\n" line, written with one call, as denoise does. */
    uint8_t *line = malloc(n + 6);
    if (!line) die("out of memory");
    memcpy(line, "FRAME\n", 6);
    uint8_t *result = line + 6;
    long long loop_ns = 0;
    long frames = 0, next = 0; /* next: pool index to read into */
    if (!read_frame(in, pool[0], n)) die("no frames");
    for (int j = 0; j <= r; j++) win[j] = pool[0];
    int more = 1, real_ahead = 0; /* frames of IN in win[r+1..] */
    next = 1;
    for (int j = r + 1; j < k; j++) {
        if (more && read_frame(in, pool[next], n)) {
            win[j] = pool[next];
            next = (next + 1) % k;
            real_ahead++;
        } else {
            more = 0;
            win[j] = win[j - 1];
        }
    }
    for (;;) {
        long long start = now_ns();
        if (naive) naive_loop(result, win, w, k, total, n);
        else floor_loop(result, win, k, n);
        loop_ns += now_ns() - start;
        if (fwrite(line, 1, n + 6, out) != n + 6) die("write failed");
        frames++;
        if (!real_ahead) break;
        uint8_t *newest = win[k - 1];
        memmove(win, win + 1, (size_t)(k - 1) * sizeof *win);
        /* pool buffers rotate: the one read k frames ago is no longer in the window */
        if (more && read_frame(in, pool[next], n)) {
            win[k - 1] = pool[next];
            next = (next + 1) % k;
        } else {
            more = 0;
            win[k - 1] = newest;
            real_ahead--;
        }
    }
    if (fclose(out)) die("write failed");
    printf("{\"frames\": %ld, \"loop_ns\": %lld}\n", frames, loop_ns);
    return 0;
}
