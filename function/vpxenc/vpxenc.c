/*
 * vpxenc: encode a Y4M (YUV4MPEG2) stream into an IVF file with libvpx (VP9 or VP8).
 *
 * Theory of operation
 * -------------------
 * The input is 8-bit 4:2:0 Y4M (C420, C420jpeg, C420mpeg2, C420paldv, or no C tag), the
 * format png2y4m writes. Anything else (other chroma layouts, deeper samples, interlaced
 * frames, a damaged header or a short frame) ends with one error line naming the problem and
 * status 1, before libvpx sees a byte of it. The header is read into a bounded line buffer
 * and parsed tag by tag; every number is range-checked, and a frame larger than --max-pixels
 * is refused before its buffer is allocated, so a 40-byte header cannot ask for gigabytes.
 *
 * Encoding is one pass, in the order the frames come: each frame is read straight into the
 * planes of one reused vpx_image_t, handed to vpx_codec_encode() with pts = frame index and
 * the Y4M frame rate as the time base (so the IVF rate/scale are the Y4M F numbers), and the
 * packets libvpx returns are written as IVF frames. The first frame is forced to be a
 * keyframe. End-of-stream flushes the encoder's lag buffer. Everything else is libvpx's
 * default configuration, so the same settings given to Debian's vpxenc (with --passes=1,
 * and a negative --cpu-used for VP8 realtime) give the same bytes.
 *
 * The output is the same bytes for the same input and settings, whatever the machine's load:
 * libvpx's one-pass encoder is deterministic except where it reads the clock, and those
 * paths are kept shut. Row-based multithreading is never enabled; VP8 realtime always runs
 * at a fixed speed (a negative cpu-used to libvpx; a positive one lets it pick the speed
 * from the time each frame took); and --good passes a deadline longer than a frame's
 * duration (libvpx takes a shorter one as realtime, which at 1 fps or slower the standard
 * one-second good-quality deadline is). Nothing else (time, paths) goes into the file.
 *
 * The IVF is written to a temporary file next to the output and renamed over it only once
 * the last frame is flushed and the header holds the frame count: a failed run leaves no
 * partial IVF behind, and the output file is either the old one or the complete new one.
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
#include <sys/stat.h>
#include <unistd.h>
#include <vpx/vp8cx.h>
#include <vpx/vpx_encoder.h>

#define HEADER_MAX 1024 /* the longest Y4M stream or frame header line accepted */
#define MAX_SIDE 65535u /* libvpx's bound on a VP9 frame side (16 bits) */
#define VP8_MAX_SIDE 16383u /* VP8 stores 14 bits of width and height */
#define MAX_RATE 1000000000 /* libvpx's bound on either number of the time base */
#define DEFAULT_MAX_PIXELS (7680ull * 4320ull) /* 8K UHD, as png2y4m */

struct options {
    const char *output;
    int vp8, realtime, cpu_used, threads;
    int target_bitrate; /* kbit/s; 0 when --cq-level is used */
    int cq_level;       /* -1 when --target-bitrate is used */
    int kf_max_dist;    /* -1: libvpx's default */
    unsigned long long max_pixels;
};

/* The temporary output, removed by fail() (and on SIGINT, SIGTERM, SIGHUP) so an error
 * leaves nothing behind. */
static char *volatile tmp_output;

static void on_signal(int sig) {
    if (tmp_output) unlink(tmp_output); /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
}

static void fail(const char *file, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "vpxenc: %s: ", file);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (tmp_output) unlink(tmp_output);
    exit(1);
}

/* ------------------------------------------------------------------ Y4M input */

struct y4m {
    unsigned width, height;
    int fps_n, fps_d;
};

/* Read one '\n'-terminated line of at most HEADER_MAX bytes into buf (HEADER_MAX + 1 bytes;
 * always NUL-terminated, without the newline). Returns its length, -1 at end of input before
 * any byte, -2 for end of input inside the line, -3 when the line is too long. */
static int read_line(FILE *in, char *buf) {
    int n = 0, c;
    while ((c = getc(in)) != EOF) {
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

/* Parse the decimal digits of `s` (all of it) into 1..max. */
static int parse_side(const char *s, unsigned max, unsigned *out) {
    unsigned long v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > max) return -1;
    }
    if (v == 0) return -1;
    *out = (unsigned)v;
    return 0;
}

/* Parse "N:D" with both in 1..INT_MAX. */
static int parse_ratio(const char *s, int *n, int *d) {
    unsigned a, b;
    char num[16];
    const char *colon = strchr(s, ':');
    if (!colon || colon - s >= (long)sizeof num) return -1;
    memcpy(num, s, (size_t)(colon - s));
    num[colon - s] = 0;
    if (parse_side(num, INT_MAX, &a) || parse_side(colon + 1, INT_MAX, &b)) return -1;
    *n = (int)a;
    *d = (int)b;
    return 0;
}

static void read_header(FILE *in, const char *name, struct y4m *y) {
    char line[HEADER_MAX + 1];
    int n = read_line(in, line);
    if (n == -1) fail(name, "empty input (no Y4M header)");
    if (n == -3) fail(name, "not a Y4M file (no header line in the first %d bytes)", HEADER_MAX);
    if (strncmp(line, "YUV4MPEG2", 9) || (line[9] != ' ' && line[9] != 0))
        fail(name, "not a Y4M file (it does not start with 'YUV4MPEG2 ')");
    if (n == -2) fail(name, "truncated Y4M header (the input ends inside it)");
    for (size_t i = 0; i < (size_t)n; i++)
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e)
            fail(name, "Y4M header holds a non-printable byte (0x%02x) at offset %zu",
                 (unsigned char)line[i], i);
    y->width = y->height = 0;
    y->fps_n = y->fps_d = 0;
    char *save = NULL;
    for (char *tok = strtok_r(line + 9, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        const char *v = tok + 1;
        switch (tok[0]) {
        case 'W':
            if (parse_side(v, MAX_SIDE, &y->width))
                fail(name, "bad width '%s' in the Y4M header (1..%u)", tok, MAX_SIDE);
            break;
        case 'H':
            if (parse_side(v, MAX_SIDE, &y->height))
                fail(name, "bad height '%s' in the Y4M header (1..%u)", tok, MAX_SIDE);
            break;
        case 'F':
            if (parse_ratio(v, &y->fps_n, &y->fps_d))
                fail(name, "bad frame rate '%s' in the Y4M header (need F<n>:<d>, both >= 1)",
                     tok);
            break;
        case 'I':
            if (strcmp(v, "p") && strcmp(v, "?"))
                fail(name, "interlaced Y4M ('%s') is not supported: the encoder takes "
                     "progressive frames (Ip)", tok);
            break;
        case 'C':
            if (!strcmp(v, "420") || !strcmp(v, "420jpeg") || !strcmp(v, "420mpeg2") ||
                !strcmp(v, "420paldv"))
                break;
            if (strchr(v, 'p') && (strstr(v, "p9") || strstr(v, "p1")))
                fail(name, "high bit depth Y4M ('%s') is not supported: the encoder takes "
                     "8-bit 4:2:0 (C420, C420jpeg, C420mpeg2, C420paldv)", tok);
            fail(name, "chroma '%s' is not supported: the encoder takes 8-bit 4:2:0 "
                 "(C420, C420jpeg, C420mpeg2, C420paldv)", tok);
            break;
        default: break; /* A (aspect), X (extensions) and unknown tags are ignored */
        }
    }
    if (!y->width || !y->height) fail(name, "the Y4M header gives no width (W) or height (H)");
    if (!y->fps_n) fail(name, "the Y4M header gives no frame rate (F)");
    if (y->fps_n > MAX_RATE || y->fps_d > MAX_RATE) /* libvpx's bound on the time base */
        fail(name, "frame rate F%d:%d is out of range (each number at most %d)", y->fps_n,
             y->fps_d, MAX_RATE);
}

/* Read the "FRAME[ params]\n" line before frame `index`. Returns 0 at a clean end. */
static int read_frame_header(FILE *in, const char *name, long index) {
    char line[HEADER_MAX + 1];
    int n = read_line(in, line);
    if (n == -1) return 0;
    if (n == -2) fail(name, "truncated frame header after %ld frames", index);
    if (n == -3 || strncmp(line, "FRAME", 5) || (line[5] != ' ' && line[5] != 0))
        fail(name, "frame %ld does not start with 'FRAME' (damaged or not 8-bit 4:2:0 data)",
             index);
    return 1;
}

/* Read the planes of one frame into img. */
static void read_frame(FILE *in, const char *name, long index, vpx_image_t *img) {
    size_t want = 0, got = 0;
    for (int p = 0; p < 3; p++) {
        unsigned w = p ? (img->d_w + 1) / 2 : img->d_w;
        unsigned h = p ? (img->d_h + 1) / 2 : img->d_h;
        want += (size_t)w * h;
    }
    for (int p = 0; p < 3; p++) {
        unsigned w = p ? (img->d_w + 1) / 2 : img->d_w;
        unsigned h = p ? (img->d_h + 1) / 2 : img->d_h;
        /* A plane whose rows are contiguous is read in one call (glibc then reads large
         * requests straight into it, bypassing the stdio buffer), others row by row. */
        int whole = (size_t)img->stride[p] == w;
        for (unsigned r = 0; r < (whole ? 1 : h); r++) {
            size_t len = whole ? (size_t)w * h : w;
            size_t n = fread(img->planes[p] + (size_t)r * (size_t)img->stride[p], 1, len, in);
            got += n;
            if (n != len) {
                if (ferror(in)) fail(name, "read failed: %s", strerror(errno));
                fail(name, "frame %ld is truncated: %zu of its %zu bytes", index, got, want);
            }
        }
    }
}

/* ------------------------------------------------------------------ IVF output */

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void write_all(FILE *out, const char *name, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, out) != n) fail(name, "write failed: %s", strerror(errno));
}

static void ivf_header(uint8_t h[32], int vp8, const vpx_codec_enc_cfg_t *cfg, uint32_t frames) {
    memcpy(h, "DKIF", 4);
    put_le(h + 4, 0, 2);  /* version */
    put_le(h + 6, 32, 2); /* header size */
    memcpy(h + 8, vp8 ? "VP80" : "VP90", 4);
    put_le(h + 12, cfg->g_w, 2);
    put_le(h + 14, cfg->g_h, 2);
    put_le(h + 16, (uint64_t)cfg->g_timebase.den, 4); /* rate */
    put_le(h + 20, (uint64_t)cfg->g_timebase.num, 4); /* scale */
    put_le(h + 24, frames, 4);
    put_le(h + 28, 0, 4);
}

/* Write the packets the encoder has ready; returns how many frames were written. */
static uint32_t drain(vpx_codec_ctx_t *codec, FILE *out, const char *name) {
    vpx_codec_iter_t iter = NULL;
    const vpx_codec_cx_pkt_t *pkt;
    uint32_t frames = 0;
    while ((pkt = vpx_codec_get_cx_data(codec, &iter))) {
        if (pkt->kind != VPX_CODEC_CX_FRAME_PKT) continue;
        uint8_t h[12];
        put_le(h, pkt->data.frame.sz, 4);
        put_le(h + 4, (uint64_t)pkt->data.frame.pts, 8);
        write_all(out, name, h, sizeof h);
        write_all(out, name, pkt->data.frame.buf, pkt->data.frame.sz);
        frames++;
    }
    return frames;
}

static void codec_fail(vpx_codec_ctx_t *codec, const char *name, const char *what) {
    const char *detail = vpx_codec_error_detail(codec);
    fail(name, "%s: %s%s%s", what, vpx_codec_error(codec), detail ? ": " : "",
         detail ? detail : "");
}

/* ------------------------------------------------------------------ options */

static void usage(FILE *to) {
    fputs("usage: vpxenc [options] INPUT\n"
          "  INPUT is a Y4M file (8-bit 4:2:0, as png2y4m writes), or - for stdin.\n"
          "  -o, --output FILE        IVF file to write (required)\n"
          "      --codec vp9|vp8      codec (default vp9)\n"
          "      --good               good-quality deadline (the default)\n"
          "      --rt                 realtime deadline\n"
          "      --cpu-used N         speed/quality trade-off, higher is faster (default 4;\n"
          "                           VP9 -9..9, VP8 -16..16; VP8 with --rt: a fixed\n"
          "                           speed |N|, 1..16)\n"
          "      --target-bitrate K   variable bitrate, K kbit/s\n"
          "      --cq-level N         constant quality, 0 (best) to 63 (default 32, used\n"
          "                           unless --target-bitrate is given)\n"
          "      --kf-max-dist N      at most N frames between keyframes (default libvpx's);\n"
          "                           the first frame is always a keyframe\n"
          "      --threads N          encoder threads (default 1)\n"
          "      --max-pixels N       refuse frames of more than N pixels (default 33177600,\n"
          "                           8K UHD 7680x4320)\n"
          "  -h, --help               this help\n"
          "  One pass; the same input and options give the same bytes. On an error the\n"
          "  output is left as it was.\n",
          to);
}

static unsigned long long parse_count(const char *opt, const char *v) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || *end || v[0] == '-' || !v[0] || n < 1)
        fail(opt, "'%s' is not an integer >= 1", v);
    return n;
}

static int parse_int(const char *opt, const char *v, int min, int max) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || !v[0] || n < min || n > max)
        fail(opt, "'%s' is not an integer from %d to %d", v, min, max);
    return (int)n;
}

int main(int argc, char **argv) {
    struct options o = {NULL, 0, 0, 4, 1, 0, -1, -1, DEFAULT_MAX_PIXELS};
    int cq_set = 0;
    static const struct option longs[] = {
        {"output", required_argument, NULL, 'o'},  {"codec", required_argument, NULL, 1},
        {"good", no_argument, NULL, 2},            {"rt", no_argument, NULL, 3},
        {"cpu-used", required_argument, NULL, 4},  {"target-bitrate", required_argument, NULL, 5},
        {"cq-level", required_argument, NULL, 6},  {"kf-max-dist", required_argument, NULL, 7},
        {"threads", required_argument, NULL, 8},   {"max-pixels", required_argument, NULL, 9},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", longs, NULL)) != -1) {
        switch (c) {
        case 'o': o.output = optarg; break;
        case 1:
            if (!strcmp(optarg, "vp9")) o.vp8 = 0;
            else if (!strcmp(optarg, "vp8")) o.vp8 = 1;
            else fail("--codec", "'%s' is not a codec (vp9 or vp8)", optarg);
            break;
        case 2: o.realtime = 0; break;
        case 3: o.realtime = 1; break;
        case 4: o.cpu_used = parse_int("--cpu-used", optarg, -16, 16); break;
        case 5: o.target_bitrate = parse_int("--target-bitrate", optarg, 1, 1000000); break;
        case 6:
            o.cq_level = parse_int("--cq-level", optarg, 0, 63);
            cq_set = 1;
            break;
        case 7: o.kf_max_dist = parse_int("--kf-max-dist", optarg, 0, INT_MAX); break;
        case 8: o.threads = parse_int("--threads", optarg, 1, 64); break;
        case 9: o.max_pixels = parse_count("--max-pixels", optarg); break;
        case 'h': usage(stdout); return 0;
        case ':': fail("options", "option '%s' needs a value (see --help)", argv[optind - 1]); break;
        default:
            if (optopt) fail("options", "unknown option '-%c' (see --help)", optopt);
            fail("options", "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (!o.output) fail("options", "-o/--output is required (see --help)");
    if (optind != argc - 1) fail("options", "exactly one INPUT is needed (see --help)");
    if (cq_set && o.target_bitrate)
        fail("options", "give --target-bitrate or --cq-level, not both");
    if (!o.target_bitrate && !cq_set) o.cq_level = 32;
    if (!o.vp8 && (o.cpu_used < -9 || o.cpu_used > 9))
        fail("--cpu-used", "'%d' is out of range for VP9 (-9 to 9)", o.cpu_used);
    /* VP8 in realtime mode takes a positive cpu-used as leave to choose the speed itself from
     * the time each frame took, so its output would follow the machine's load; a negative
     * one is a fixed speed. Ours is always fixed: N (or -N) is libvpx's -|N|. */
    if (o.vp8 && o.realtime && o.cpu_used == 0)
        fail("--cpu-used", "VP8 with --rt needs a speed from 1 to 16 (0 would let libvpx pick "
             "the speed from the time each frame takes, so the output would depend on the "
             "machine's load)");
    int cpu_used = o.vp8 && o.realtime ? -abs(o.cpu_used) : o.cpu_used;
    const char *input = argv[optind];
    struct stat st_in, st_out;
    if (strcmp(input, "-") && !stat(input, &st_in) && !stat(o.output, &st_out) &&
        st_in.st_dev == st_out.st_dev && st_in.st_ino == st_out.st_ino)
        fail("options", "the output may not be the input ('%s')", input);

    FILE *in = strcmp(input, "-") ? fopen(input, "rb") : stdin;
    if (!in) fail(input, "%s", strerror(errno));
    struct y4m y;
    read_header(in, input, &y);
    unsigned long long pixels = (unsigned long long)y.width * y.height;
    if (pixels > o.max_pixels)
        fail(input, "frames are %ux%u = %llu pixels, above the limit of %llu pixels "
             "(--max-pixels; the default is 8K UHD, 7680x4320)",
             y.width, y.height, pixels, o.max_pixels);
    if (o.vp8 && (y.width > VP8_MAX_SIDE || y.height > VP8_MAX_SIDE))
        fail(input, "frames are %ux%u; VP8 takes at most %ux%u (use VP9)", y.width, y.height,
             VP8_MAX_SIDE, VP8_MAX_SIDE);
    if (!read_frame_header(in, input, 0)) fail(input, "no frame in the input");

    vpx_codec_iface_t *iface = o.vp8 ? vpx_codec_vp8_cx() : vpx_codec_vp9_cx();
    vpx_codec_enc_cfg_t cfg;
    if (vpx_codec_enc_config_default(iface, &cfg, 0))
        fail(input, "libvpx has no default configuration");
    cfg.g_w = y.width;
    cfg.g_h = y.height;
    cfg.g_timebase.num = y.fps_d;
    cfg.g_timebase.den = y.fps_n;
    cfg.g_threads = (unsigned)o.threads;
    cfg.g_pass = VPX_RC_ONE_PASS;
    if (o.target_bitrate) {
        cfg.rc_end_usage = VPX_VBR;
        cfg.rc_target_bitrate = (unsigned)o.target_bitrate;
    } else {
        cfg.rc_end_usage = VPX_Q;
    }
    if (o.kf_max_dist >= 0) cfg.kf_max_dist = (unsigned)o.kf_max_dist;

    vpx_codec_ctx_t codec;
    if (vpx_codec_enc_init(&codec, iface, &cfg, 0)) codec_fail(&codec, input, "cannot start the encoder");
    if (vpx_codec_control(&codec, VP8E_SET_CPUUSED, cpu_used))
        codec_fail(&codec, "--cpu-used", "refused");
    if (o.cq_level >= 0 && vpx_codec_control(&codec, VP8E_SET_CQ_LEVEL, (unsigned)o.cq_level))
        codec_fail(&codec, "--cq-level", "refused");

    vpx_image_t img;
    if (!vpx_img_alloc(&img, VPX_IMG_FMT_I420, y.width, y.height, 32))
        fail(input, "out of memory for a %ux%u frame", y.width, y.height);

    /* The temporary output is created beside the output, so the final rename stays on one
     * file system, with the mode a plain create would give. */
    size_t len = strlen(o.output);
    char *name = malloc(len + 16);
    if (!name) fail(o.output, "out of memory");
    snprintf(name, len + 16, "%s.tmpXXXXXX", o.output);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    for (int i = 0; i < 3; i++) sigaction((int[]){SIGINT, SIGTERM, SIGHUP}[i], &sa, NULL);
    int fd = mkstemp(name);
    if (fd < 0) fail(o.output, "cannot open for writing: %s", strerror(errno));
    tmp_output = name;
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(fd, 0666 & ~mask)) fail(o.output, "cannot set the mode: %s", strerror(errno));
    FILE *out = fdopen(fd, "wb");
    if (!out) fail(o.output, "cannot open for writing: %s", strerror(errno));
    setvbuf(out, NULL, _IOFBF, 1 << 20);
    uint8_t h[32];
    ivf_header(h, o.vp8, &cfg, 0);
    write_all(out, o.output, h, sizeof h);

    /* libvpx picks good quality only when the deadline (us) is longer than the frame's
     * duration, so at 1 fps or slower VPX_DL_GOOD_QUALITY (1 s) would silently mean realtime
     * (and, for VP8, a speed chosen from the clock); a longer deadline keeps --good. */
    unsigned long deadline = VPX_DL_REALTIME;
    if (!o.realtime) {
        unsigned long long frame_us = 1000000ull * (unsigned)y.fps_d / (unsigned)y.fps_n;
        deadline = frame_us < VPX_DL_GOOD_QUALITY ? VPX_DL_GOOD_QUALITY
                                                  : (unsigned long)(2 * frame_us + 1000000);
    }
    uint32_t written = 0;
    long index = 0;
    do {
        read_frame(in, input, index, &img);
        vpx_enc_frame_flags_t flags = index == 0 ? VPX_EFLAG_FORCE_KF : 0;
        if (vpx_codec_encode(&codec, &img, index, 1, flags, deadline))
            codec_fail(&codec, input, "encoding failed");
        written += drain(&codec, out, o.output);
        index++;
        if (index > (long)UINT32_MAX / 2) fail(input, "more than %ld frames", index - 1);
    } while (read_frame_header(in, input, index));
    for (;;) {
        if (vpx_codec_encode(&codec, NULL, -1, 1, 0, deadline))
            codec_fail(&codec, input, "encoding failed");
        uint32_t n = drain(&codec, out, o.output);
        if (!n) break;
        written += n;
    }
    ivf_header(h, o.vp8, &cfg, written);
    if (fseek(out, 0, SEEK_SET)) fail(o.output, "cannot seek: %s", strerror(errno));
    write_all(out, o.output, h, sizeof h);
    if (fclose(out)) fail(o.output, "write failed: %s", strerror(errno));
    if (rename(tmp_output, o.output)) fail(o.output, "cannot rename into place: %s", strerror(errno));
    tmp_output = NULL;
    free(name);
    vpx_img_free(&img);
    if (vpx_codec_destroy(&codec)) fail(input, "cannot close the encoder");
    if (in != stdin) fclose(in);
    return 0;
}
