/*
 * denoise: a temporal filter over a chunk of an 8-bit Y4M (YUV4MPEG2) video.
 *
 * Theory of operation
 * -------------------
 * Output frame t is the integer-weighted average of input frames t-R..t+R, sample by
 * sample, with the binomial weights of row 2R of Pascal's triangle (1 2 1; 1 4 6 4 1;
 * 1 6 15 20 15 6 1; ...), rounded half up: (sum(w*x) + W/2) div W, W = 4^R the weights'
 * sum. Every plane is filtered alike, so a frame is one contiguous run of samples
 * (Y then Cb then Cr) and the filter never looks at the planes' shapes.
 *
 * The input is one chunk of a longer video. The R frames before it come from -p PREV (its
 * last R frames), the R frames after it from -n NEXT (its first R frames). Without -p the
 * chunk starts the video and its first frame stands for the frames before it; without -n
 * its last frame stands for those after it. So the chunks of a video, each filtered with
 * its neighbours' frames, give exactly the frames of the whole video filtered in one piece.
 *
 * Frames stream through a window of 2R+1 frame pointers over a pool of 2R+1 frame buffers:
 * the window's entries may share a buffer (a repeated edge frame), and a new frame is read
 * into a buffer no entry of the window after the shift refers to, so memory is 2R+2
 * frames (the pool and one output frame) whatever the chunk's length. The kernel is one
 * loop per radius over the frame's samples with the weights as constants, summing the
 * symmetric pairs first, in 16 bits (255 * 4^R + 4^R/2 < 65536 for R <= 4); gcc turns it
 * into SIMD code, and the division is a shift because W is a power of two.
 *
 * Y4M as png2y4m writes it: a header line "YUV4MPEG2 W H F A I C" (C420jpeg, C422jpeg,
 * C444; also C420, C420mpeg2, C420paldv, C422, or no C tag meaning 4:2:0), then per frame
 * a "FRAME[ params]" line and the Y, Cb, Cr planes, chroma ceil(W/2) wide (4:2:0, 4:2:2)
 * and ceil(H/2) high (4:2:0). The output carries the input's header line unchanged and
 * "FRAME" lines without parameters. PREV and NEXT must have the input's size and chroma.
 *
 * Errors (a damaged or truncated file, a header mismatch, too few frames in PREV, NEXT or
 * for --head/--tail) print one line on stderr and exit with status 1. The output is written
 * to a temporary file beside OUT and renamed over it only when complete, so a failure (or
 * SIGINT, SIGTERM, SIGHUP) leaves no OUT behind. A header claiming more samples than the
 * file holds is refused before any frame buffer is allocated.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEADER_MAX 1024 /* the longest Y4M stream or frame header line accepted */
#define MAX_SIDE 65535u /* the largest width or height accepted */
#define MAX_PIXELS (7680ull * 4320ull) /* 8K UHD, as png2y4m and vpxenc */
#define MAX_RADIUS 4 /* 16-bit sums: 255 * 4^R + 4^R / 2 < 65536 */
#define FRAME_PREFIX 6 /* "FRAME\n" before an output frame's samples */

enum chroma { C420, C422, C444 };

struct y4m {
    FILE *f;
    const char *name;
    char header[HEADER_MAX + 2]; /* the header line with its newline */
    unsigned width, height;
    enum chroma chroma;
    size_t frame_bytes;
    long frames_read;
};

/* The temporary output, removed by fail() (and on SIGINT, SIGTERM, SIGHUP) so an error
 * leaves nothing behind. */
static char *volatile tmp_output;

static void on_signal(int sig) {
    if (tmp_output) unlink(tmp_output); /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((format(printf, 2, 3), noreturn)) static void fail(const char *file,
                                                                 const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "denoise: %s: ", file);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (tmp_output) unlink(tmp_output);
    exit(1);
}

/* ------------------------------------------------------------------ Y4M input */

/* Read one '\n'-terminated line of at most HEADER_MAX bytes into buf (HEADER_MAX + 1
 * bytes; NUL-terminated, without the newline). Returns its length, -1 at end of input
 * before any byte, -2 for end of input inside the line, -3 when the line is too long. */
static int read_line(FILE *in, char *buf) {
    int n = 0, c;
    while ((c = getc_unlocked(in)) != EOF) {
        if (c == '\n') {
            buf[n] = 0;
            return n;
        }
        if (n == HEADER_MAX) {
            buf[n] = 0;
            return -3;
        }
        buf[n++] = (char)c;
    }
    buf[n] = 0;
    return n ? -2 : -1;
}

/* Parse the decimal digits of `s` (all of it) into min..max. */
static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out) {
    unsigned long v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > max) return -1;
    }
    if (v < min) return -1;
    *out = v;
    return 0;
}

/* "N:D", both decimal (as mu.y4m reads them). */
static int valid_ratio(const char *s) {
    unsigned long n, d;
    char num[16];
    const char *colon = strchr(s, ':');
    if (!colon || colon - s >= (long)sizeof num) return 0;
    memcpy(num, s, (size_t)(colon - s));
    num[colon - s] = 0;
    return !parse_uint(num, 0, INT_MAX, &n) && !parse_uint(colon + 1, 0, INT_MAX, &d);
}

static const char *chroma_name(enum chroma c) {
    return c == C420 ? "4:2:0" : c == C422 ? "4:2:2" : "4:4:4";
}

static void open_y4m(struct y4m *y, const char *name) {
    char line[HEADER_MAX + 1];
    memset(y, 0, sizeof *y);
    y->name = name;
    y->f = fopen(name, "rb");
    if (!y->f) fail(name, "cannot open: %s", strerror(errno));
    int n = read_line(y->f, line);
    if (n == -1) fail(name, "empty file (no Y4M header)");
    if (n == -3) fail(name, "not a Y4M file (no header line in the first %d bytes)", HEADER_MAX);
    if (strncmp(line, "YUV4MPEG2 ", 10))
        fail(name, "not a Y4M file (it does not start with 'YUV4MPEG2 ')");
    if (n == -2) fail(name, "truncated Y4M header (the file ends inside it)");
    for (int i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e)
            fail(name, "the Y4M header holds a non-printable byte (0x%02x) at offset %d",
                 (unsigned char)line[i], i);
    memcpy(y->header, line, (size_t)n);
    y->header[n] = '\n';
    y->header[n + 1] = 0;
    y->chroma = C420;
    char *save = NULL;
    for (char *tok = strtok_r(line + 10, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        const char *v = tok + 1;
        unsigned long side;
        switch (tok[0]) {
        case 'W':
            if (parse_uint(v, 1, MAX_SIDE, &side))
                fail(name, "bad width '%s' in the Y4M header (1..%u)", tok, MAX_SIDE);
            y->width = (unsigned)side;
            break;
        case 'H':
            if (parse_uint(v, 1, MAX_SIDE, &side))
                fail(name, "bad height '%s' in the Y4M header (1..%u)", tok, MAX_SIDE);
            y->height = (unsigned)side;
            break;
        case 'F':
        case 'A':
            if (!valid_ratio(v))
                fail(name, "bad %s '%s' in the Y4M header (need %c<n>:<d>)",
                     tok[0] == 'F' ? "frame rate" : "aspect", tok, tok[0]);
            break;
        case 'C':
            if (!strcmp(v, "420jpeg") || !strcmp(v, "420") || !strcmp(v, "420mpeg2") ||
                !strcmp(v, "420paldv"))
                y->chroma = C420;
            else if (!strcmp(v, "422jpeg") || !strcmp(v, "422"))
                y->chroma = C422;
            else if (!strcmp(v, "444"))
                y->chroma = C444;
            else
                fail(name, "chroma '%s' is not supported: 8-bit C420jpeg, C422jpeg or C444 "
                     "(also C420, C420mpeg2, C420paldv, C422)", tok);
            break;
        default: break; /* I (interlacing), X (extensions) and unknown tags are kept as is */
        }
    }
    if (!y->width || !y->height) fail(name, "the Y4M header gives no width (W) or height (H)");
    unsigned long long pixels = (unsigned long long)y->width * y->height;
    if (pixels > MAX_PIXELS)
        fail(name, "frame of %ux%u is more than %llu pixels (8K UHD)", y->width, y->height,
             MAX_PIXELS);
    unsigned long long cw = y->chroma == C444 ? y->width : (y->width + 1) / 2;
    unsigned long long ch = y->chroma == C420 ? (y->height + 1) / 2 : y->height;
    y->frame_bytes = (size_t)(pixels + 2 * cw * ch);
    /* Bound the allocation by what the file can hold: a frame larger than the rest of the
     * file is a truncated frame, refused before any buffer is asked for. */
    struct stat st;
    long pos = ftell(y->f);
    if (!fstat(fileno(y->f), &st) && S_ISREG(st.st_mode) && pos >= 0 && st.st_size > pos &&
        (unsigned long long)(st.st_size - pos) < FRAME_PREFIX + y->frame_bytes)
        fail(name, "frame 0 is truncated: the file holds %lld bytes after the header, a "
             "frame takes %zu", (long long)(st.st_size - pos), FRAME_PREFIX + y->frame_bytes);
}

/* Check that `o` has the geometry of `y` (frames of one holding the other's layout). */
static void check_same(const struct y4m *y, const struct y4m *o) {
    if (o->width != y->width || o->height != y->height || o->chroma != y->chroma)
        fail(o->name, "header mismatch: %ux%u %s, but %s is %ux%u %s", o->width, o->height,
             chroma_name(o->chroma), y->name, y->width, y->height, chroma_name(y->chroma));
}

/* A frame buffer. One of 1080p is 3 MB: in 4 KiB pages its first touch costs about 760
 * page faults, which took more CPU than the filter itself, so a buffer of at least a huge
 * page is aligned to huge pages and asked to be backed by them (where transparent huge
 * pages are enabled; elsewhere madvise fails and the buffer has small pages, as before). */
static uint8_t *alloc_frame(const struct y4m *y) {
    enum { HUGE = 2u << 20 };
    size_t size = FRAME_PREFIX + y->frame_bytes;
    uint8_t *p;
    if (size >= HUGE) {
        size_t rounded = (size + HUGE - 1) / HUGE * HUGE;
        p = aligned_alloc(HUGE, rounded);
        if (p) (void)madvise(p, rounded, MADV_HUGEPAGE);
    } else {
        p = malloc(size);
    }
    if (!p) fail(y->name, "out of memory for a frame of %zu bytes", y->frame_bytes);
    memcpy(p, "FRAME\n", FRAME_PREFIX);
    return p;
}

/* Read the next frame into *buf ("FRAME\n" and the samples), allocating it once a frame
 * header has been read: a buffer is asked for only for a frame the file begins to hold.
 * Returns 1, or 0 at a clean end of the file. */
static int read_frame(struct y4m *y, uint8_t **buf) {
    char line[HEADER_MAX + 1];
    long index = y->frames_read;
    int n = read_line(y->f, line);
    if (n == -1) {
        if (ferror(y->f)) fail(y->name, "read failed: %s", strerror(errno));
        return 0;
    }
    if (n == -2) fail(y->name, "truncated frame header after %ld frames", index);
    if (n == -3 || strncmp(line, "FRAME", 5) || (line[5] != ' ' && line[5] != 0))
        fail(y->name, "frame %ld does not start with 'FRAME' (damaged data, or samples that "
             "do not fit the header)", index);
    if (!*buf) *buf = alloc_frame(y);
    size_t got = fread(*buf + FRAME_PREFIX, 1, y->frame_bytes, y->f);
    if (got != y->frame_bytes) {
        if (ferror(y->f)) fail(y->name, "read failed: %s", strerror(errno));
        fail(y->name, "frame %ld is truncated: %zu of its %zu bytes", index, got, y->frame_bytes);
    }
    y->frames_read++;
    return 1;
}

/* ------------------------------------------------------------------ output */

struct output {
    FILE *f;
    const char *name;
    char *tmp;
};

static void same_file_check(const char *out, const char *in) {
    struct stat a, b;
    if (in && !stat(out, &a) && !stat(in, &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        fail(out, "-o names an input file (%s); write the output elsewhere", in);
}

static void open_output(struct output *o, const char *name) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
    /* Beside the output, so the final rename stays on one file system. */
    size_t len = strlen(name);
    o->tmp = malloc(len + 16);
    if (!o->tmp) fail(name, "out of memory");
    snprintf(o->tmp, len + 16, "%s.tmpXXXXXX", name);
    int fd = mkstemp(o->tmp);
    if (fd < 0) fail(name, "cannot open for writing: %s", strerror(errno));
    tmp_output = o->tmp;
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(fd, 0666 & ~mask)) fail(name, "cannot set the mode: %s", strerror(errno));
    o->f = fdopen(fd, "wb");
    if (!o->f) fail(name, "cannot open for writing: %s", strerror(errno));
    o->name = name;
}

static void write_all(struct output *o, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, o->f) != n) fail(o->name, "write failed: %s", strerror(errno));
}

static void close_output(struct output *o) {
    if (fclose(o->f)) fail(o->name, "write failed: %s", strerror(errno));
    if (rename(o->tmp, o->name)) fail(o->name, "cannot rename into place: %s", strerror(errno));
    tmp_output = NULL;
    free(o->tmp);
}

/* ------------------------------------------------------------------ the filter */

/* out = the weighted average of in[0..2R], sample by sample. The weights are constants in
 * each case so the multiplications become shifts and adds; the sums are 16-bit lanes. */
__attribute__((target_clones("avx2", "default"))) static void
filter_frame(uint8_t *restrict out, const uint8_t *const *in, size_t n, int r) {
    switch (r) {
    case 0:
        memcpy(out, in[0], n);
        break;
    case 1: {
        const uint8_t *restrict a = in[0], *restrict b = in[1], *restrict c = in[2];
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)((uint16_t)(a[i] + c[i] + 2 * b[i] + 2) >> 2);
        break;
    }
    case 2: {
        const uint8_t *restrict a = in[0], *restrict b = in[1], *restrict c = in[2],
                                *restrict d = in[3], *restrict e = in[4];
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)((uint16_t)(a[i] + e[i] + 4 * (b[i] + d[i]) + 6 * c[i] + 8) >> 4);
        break;
    }
    case 3: {
        const uint8_t *restrict a = in[0], *restrict b = in[1], *restrict c = in[2],
                                *restrict d = in[3], *restrict e = in[4], *restrict f = in[5],
                                *restrict g = in[6];
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)((uint16_t)(a[i] + g[i] + 6 * (b[i] + f[i]) + 15 * (c[i] + e[i]) +
                                          20 * d[i] + 32) >> 6);
        break;
    }
    default: { /* 4: 1 8 28 56 70 56 28 8 1 */
        const uint8_t *restrict a = in[0], *restrict b = in[1], *restrict c = in[2],
                                *restrict d = in[3], *restrict e = in[4], *restrict f = in[5],
                                *restrict g = in[6], *restrict h = in[7], *restrict k = in[8];
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)((uint16_t)(a[i] + k[i] + 8 * (b[i] + h[i]) + 28 * (c[i] + g[i]) +
                                          56 * (d[i] + f[i]) + 70 * e[i] + 128) >> 8);
        break;
    }
    }
}

/* A pool of 2R+1 frame buffers (allocated as frames arrive) under a window of 2R+1
 * entries, which may share a buffer. */
struct window {
    int size;
    uint8_t *pool[2 * MAX_RADIUS + 1];
    uint8_t *win[2 * MAX_RADIUS + 1];
    int is_input[2 * MAX_RADIUS + 1]; /* the entry is a frame of IN (so one to output) */
};

/* The index of a buffer of the pool that no window entry from..to-1 refers to. */
static int free_buffer(const struct window *w, int from, int to) {
    for (int p = 0; p < w->size; p++) {
        int used = 0;
        for (int i = from; i < to; i++) used |= w->pool[p] && w->win[i] == w->pool[p];
        if (!used) return p;
    }
    abort(); /* unreachable: 2R+1 buffers, at most 2R entries in the range */
}

/* Where the frames come from: IN, then up to R frames of NEXT (or IN's last frame again
 * without NEXT: the video ends there). */
struct source {
    struct y4m *in, *next;
    int radius, next_taken, in_done;
};

/* Put the frame after `newest` (the frame before entry `at`) into entry `at` of the window. */
static void pull(struct window *w, struct source *s, int at, uint8_t *newest) {
    int p = free_buffer(w, 0, at);
    w->is_input[at] = 0;
    if (!s->in_done && read_frame(s->in, &w->pool[p])) {
        w->win[at] = w->pool[p];
        w->is_input[at] = 1;
        return;
    }
    s->in_done = 1;
    if (!s->next || s->next_taken == s->radius) {
        /* Without NEXT the last frame repeats; with it, frames past its R are never used. */
        w->win[at] = newest;
        return;
    }
    if (!read_frame(s->next, &w->pool[p]))
        fail(s->next->name, "holds %ld frames, the filter needs the %d after %s (-r %d)",
             s->next->frames_read, s->radius, s->in->name, s->radius);
    s->next_taken++;
    w->win[at] = w->pool[p];
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* --stats: one JSON line on stdout once OUT is in place. */
static void print_stats(long frames, size_t frame_bytes, long long filter_ns, long long start) {
    printf("{\"frames\": %ld, \"frame_bytes\": %zu, \"filter_ns\": %lld, \"total_ns\": %lld}\n",
           frames, frame_bytes, filter_ns, now_ns() - start);
}

static void run_filter(const char *in_name, const char *prev_name, const char *next_name,
                       int r, const char *out_name, int stats) {
    long long start = now_ns(), filter_ns = 0;
    long frames = 0;
    struct y4m in, prev, next;
    open_y4m(&in, in_name);
    if (prev_name) {
        open_y4m(&prev, prev_name);
        check_same(&in, &prev);
    }
    if (next_name) {
        open_y4m(&next, next_name);
        check_same(&in, &next);
    }
    struct output out;
    open_output(&out, out_name);
    write_all(&out, in.header, strlen(in.header));

    struct window w = {.size = 2 * r + 1};
    uint8_t *result = NULL;
    /* Entries 0..R-1: PREV's last R frames, in order (read through R+1 rotating buffers). */
    if (prev_name && r > 0) {
        long got = 0;
        while (read_frame(&prev, &w.pool[got % (r + 1)])) got++;
        if (got < r)
            fail(prev_name, "holds %ld frames, the filter needs the %d before %s (-r %d)", got,
                 r, in_name, r);
        for (int i = 0; i < r; i++) w.win[i] = w.pool[(got - r + i) % (r + 1)];
    }
    /* Entry R: IN's first frame (none: the output is the header alone). */
    int p = free_buffer(&w, 0, r);
    if (read_frame(&in, &w.pool[p])) {
        w.win[r] = w.pool[p];
        w.is_input[r] = 1;
        if (!prev_name || r == 0)
            for (int i = 0; i < r; i++) w.win[i] = w.win[r]; /* the video starts here */
        /* Entries R+1..2R: the frames after it. */
        struct source src = {&in, next_name ? &next : NULL, r, 0, 0};
        for (int i = r + 1; i < w.size; i++) pull(&w, &src, i, w.win[i - 1]);
        result = alloc_frame(&in);
        while (w.is_input[r]) {
            const uint8_t *samples[2 * MAX_RADIUS + 1] = {NULL};
            for (int i = 0; i < w.size; i++) samples[i] = w.win[i] + FRAME_PREFIX;
            long long t0 = now_ns();
            filter_frame(result + FRAME_PREFIX, samples, in.frame_bytes, r);
            filter_ns += now_ns() - t0;
            frames++;
            write_all(&out, result, FRAME_PREFIX + in.frame_bytes);
            /* Shift the window by one frame and pull the next one into its last entry. */
            uint8_t *newest = w.win[w.size - 1];
            memmove(w.win, w.win + 1, (size_t)(w.size - 1) * sizeof *w.win);
            memmove(w.is_input, w.is_input + 1, (size_t)(w.size - 1) * sizeof *w.is_input);
            pull(&w, &src, w.size - 1, newest);
        }
    } else if (next_name) { /* no frames, but NEXT must still hold R, as PREV must */
        for (int i = 0; i < r; i++)
            if (!read_frame(&next, &w.pool[p]))
                fail(next_name, "holds %ld frames, the filter needs the %d after %s (-r %d)",
                     next.frames_read, r, in_name, r);
    }
    close_output(&out);
    if (stats) print_stats(frames, in.frame_bytes, filter_ns, start);
    for (int i = 0; i < w.size; i++) free(w.pool[i]);
    free(result);
    fclose(in.f);
    if (prev_name) fclose(prev.f);
    if (next_name) fclose(next.f);
}

/* --head N / --tail N: a Y4M of the first or last N frames of IN. */
static void run_cut(const char *in_name, long count, int tail, const char *out_name) {
    struct y4m in;
    open_y4m(&in, in_name);
    struct output out;
    open_output(&out, out_name);
    write_all(&out, in.header, strlen(in.header));
    if (!tail) {
        uint8_t *buf = NULL;
        for (long i = 0; i < count; i++) {
            if (!read_frame(&in, &buf))
                fail(in_name, "holds %ld frames, fewer than the %ld of --head", i, count);
            write_all(&out, buf, FRAME_PREFIX + in.frame_bytes);
        }
        free(buf);
    } else {
        /* Keep the last N frames in a ring as the file streams by (one buffer for N = 0,
         * which still reads the file through). The ring grows as frames arrive, so its
         * size is bounded by the frames the file holds, not by N. */
        long slots = count ? count : 1, cap = 0, got = 0;
        uint8_t **ring = NULL;
        for (;; got++) {
            long slot = got % slots;
            if (slot >= cap) {
                long grown = cap > slots / 2 ? slots : 2 * cap + 1;
                uint8_t **more = realloc(ring, (size_t)grown * sizeof *ring);
                if (!more) fail(in_name, "out of memory");
                memset(more + cap, 0, (size_t)(grown - cap) * sizeof *more);
                ring = more;
                cap = grown;
            }
            if (!read_frame(&in, &ring[slot])) break;
        }
        if (got < count)
            fail(in_name, "holds %ld frames, fewer than the %ld of --tail", got, count);
        for (long i = 0; i < count; i++)
            write_all(&out, ring[(got - count + i) % count], FRAME_PREFIX + in.frame_bytes);
        for (long i = 0; i < cap; i++) free(ring[i]);
        free(ring);
    }
    close_output(&out);
    fclose(in.f);
}

/* ------------------------------------------------------------------ options */

static void usage(FILE *to) {
    fputs("usage: denoise -r R -o OUT [-p PREV.y4m] [-n NEXT.y4m] IN.y4m\n"
          "       denoise --head N -o OUT IN.y4m\n"
          "       denoise --tail N -o OUT IN.y4m\n"
          "  Temporal filter of an 8-bit Y4M chunk: output frame t is the average of input\n"
          "  frames t-R..t+R with binomial weights (1 2 1; 1 4 6 4 1; 1 6 15 20 15 6 1),\n"
          "  rounded half up, (sum(w*x) + W/2) div W.\n"
          "  -r R         radius, 0..4 (0 copies the frames)\n"
          "  -p PREV      a Y4M whose last R frames come just before IN; without it IN starts\n"
          "               the video and its first frame is repeated before it\n"
          "  -n NEXT      a Y4M whose first R frames come just after IN; without it IN ends\n"
          "               the video and its last frame is repeated after it\n"
          "  -o OUT       the Y4M to write (required); nothing is left there on an error\n"
          "  --head N     write the first N frames of IN instead of filtering\n"
          "  --tail N     write the last N frames of IN instead of filtering\n"
          "  --stats      print a JSON line on stdout: frames, frame_bytes, and the ns spent\n"
          "               in the filter alone (filter_ns) and in all (total_ns)\n"
          "  -h, --help   this help\n",
          to);
}

static long parse_long(const char *opt, const char *v, long max) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || !v[0] || v[0] == '-' || v[0] == '+' || n < 0 || n > max)
        fail(opt, "'%s' is not an integer in 0..%ld", v, max);
    return n;
}

int main(int argc, char **argv) {
    static const struct option longs[] = {{"head", required_argument, NULL, 1},
                                          {"tail", required_argument, NULL, 2},
                                          {"help", no_argument, NULL, 'h'},
                                          {"stats", no_argument, NULL, 3},
                                          {NULL, 0, NULL, 0}};
    const char *output = NULL, *prev = NULL, *next = NULL;
    long radius = -1, count = -1;
    int mode = 0; /* 0 filter, 1 head, 2 tail */
    int stats = 0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":r:o:p:n:h", longs, NULL)) != -1) {
        switch (c) {
        case 'r': radius = parse_long("-r", optarg, MAX_RADIUS); break;
        case 'o': output = optarg; break;
        case 'p': prev = optarg; break;
        case 'n': next = optarg; break;
        case 1:
        case 2:
            if (mode && mode != c) fail(c == 1 ? "--head" : "--tail", "give --head or --tail, not both");
            mode = c;
            count = parse_long(c == 1 ? "--head" : "--tail", optarg, INT_MAX);
            break;
        case 3: stats = 1; break;
        case 'h': usage(stdout); return 0;
        case ':': fail(argv[optind - 1], "needs a value (see --help)");
        default: fail(argv[optind - 1], "unknown option (see --help)");
        }
    }
    if (optind != argc - 1)
        fail("usage", optind == argc ? "give one input Y4M file (see --help)"
                                     : "give exactly one input Y4M file (see --help)");
    const char *input = argv[optind];
    if (!output) fail(input, "no output file: give -o OUT");
    if (mode) {
        if (radius >= 0 || prev || next || stats)
            fail(mode == 1 ? "--head" : "--tail",
                 "cuts frames; -r, -p, -n and --stats filter (give one or the other)");
    } else if (radius < 0) {
        fail(input, "no radius: give -r R (0..%d)", MAX_RADIUS);
    }
    same_file_check(output, input);
    same_file_check(output, prev);
    same_file_check(output, next);
    if (mode) run_cut(input, count, mode == 2, output);
    else run_filter(input, prev, next, (int)radius, output, stats);
    return 0;
}
