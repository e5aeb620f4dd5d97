/*
 * png2y4m: convert a run of PNG frames into a Y4M (YUV4MPEG2) stream.
 *
 * Theory of operation
 * -------------------
 * Each frame is decoded by libpng with transforms that turn every colour type and bit
 * depth into 16-bit R'G'B' (palette and gray expand to RGB, alpha is dropped, 1..8-bit
 * samples are scaled exactly to 16 bits), so 8-bit and 16-bit input go through the same
 * math. The conversion is BT.709 in double precision, studio range (Y 16..235, C
 * 16..240). Chroma is computed from the box average of R'G'B' over 2x2 (4:2:0) or 2x1
 * (4:2:2) pixels, replicating the last row/column for odd sizes.
 *
 * Quantisation rounds to nearest with --no-dither. By default a triangular (TPDF) dither
 * of +-1 LSB is added first; its noise comes from a hash of (frame, plane, x, y), so the
 * output depends only on the input, never on --threads or timing.
 *
 * Each frame is converted into one buffer and written with a single write; if anything
 * fails the output is truncated back to where the frame began, so a Y4M never holds a
 * partial frame. With -i the existing header must match (size and chroma) or the file is
 * left untouched. With -d each PNG is deleted only after its frame is written.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum chroma { C420, C422, C444 };

struct options {
    const char *output;
    int incremental, delete_input, dither, threads;
    enum chroma chroma;
    int fps_n, fps_d, aspect_n, aspect_d;
};

struct image {
    uint32_t width, height;
    uint16_t *rgb; /* width * height * 3 samples */
};


static void fail(const char *file, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "png2y4m: %s: ", file);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ------------------------------------------------------------------ PNG decoding */

struct png_err {
    char message[256];
};

static void on_png_error(png_structp png, png_const_charp msg) {
    struct png_err *err = png_get_error_ptr(png);
    snprintf(err->message, sizeof err->message, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg; /* ancillary-chunk problems are not fatal */
}

/* Decode `path` into 16-bit RGB. Returns NULL and sets *why on failure. */
static int decode_png(const char *path, struct image *img, char *why, size_t why_len) {
    FILE *volatile f = fopen(path, "rb");
    png_structp png = NULL;
    png_infop info = NULL;
    png_bytep *volatile rows = NULL;
    uint16_t *volatile rgb = NULL;
    struct png_err err = {{0}};
    unsigned char sig[8];

    if (!f) {
        snprintf(why, why_len, "%s", strerror(errno));
        return -1;
    }
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        snprintf(why, why_len, "not a PNG file");
        return -1;
    }
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
    info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        snprintf(why, why_len, "corrupt PNG: %s", err.message[0] ? err.message : "error");
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        free(rgb);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_set_user_limits(png, 1u << 16, 1u << 16);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_expand_16(png); /* exact: v8 * 257 */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    png_set_swap(png);
#endif
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 16)
        png_error(png, "unsupported pixel layout");

    size_t row_samples = (size_t)w * 3;
    rgb = malloc(row_samples * h * sizeof(uint16_t));
    rows = malloc(h * sizeof(png_bytep));
    if (!rgb || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = (png_bytep)(rgb + row_samples * y);
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    fclose(f);
    img->width = w;
    img->height = h;
    img->rgb = rgb;
    return 0;
}

/* ------------------------------------------------------------------ conversion */

static const double KR = 0.2126, KB = 0.0722, KG = 1.0 - 0.2126 - 0.0722;

static inline uint32_t hash4(uint32_t frame, uint32_t plane, uint32_t x, uint32_t y) {
    uint32_t h = frame * 0x9E3779B1u ^ (plane + 1) * 0x85EBCA77u;
    h ^= x * 0xC2B2AE3Du;
    h = (h ^ (h >> 15)) * 0x2C1B3C6Du;
    h ^= y * 0x27D4EB2Fu;
    h = (h ^ (h >> 13)) * 0x165667B1u;
    return h ^ (h >> 16);
}

/* Triangular noise in (-1, 1) LSB from two 16-bit halves of a hash. */
static inline double tpdf(uint32_t frame, uint32_t plane, uint32_t x, uint32_t y) {
    uint32_t h = hash4(frame, plane, x, y);
    return ((h & 0xFFFF) + (h >> 16) + 1.0) / 65536.0 - 1.0;
}

static inline uint8_t quantise(double v, int dither, uint32_t frame, uint32_t plane,
                               uint32_t x, uint32_t y) {
    if (dither) v += tpdf(frame, plane, x, y);
    double r = floor(v + 0.5);
    if (r < 0) r = 0;
    if (r > 255) r = 255;
    return (uint8_t)r;
}

struct job {
    const struct image *img;
    uint8_t *y, *cb, *cr;
    uint32_t cw;
    int sx, sy, dither;
    uint32_t frame, row0, row1, crow0, crow1;
};

static void *convert_rows(void *arg) {
    const struct job *j = arg;
    const struct image *img = j->img;
    const double s = 1.0 / 65535.0;
    for (uint32_t y = j->row0; y < j->row1; y++) {
        const uint16_t *p = img->rgb + (size_t)y * img->width * 3;
        uint8_t *out = j->y + (size_t)y * img->width;
        for (uint32_t x = 0; x < img->width; x++) {
            double yy = KR * p[3 * x] * s + KG * p[3 * x + 1] * s + KB * p[3 * x + 2] * s;
            out[x] = quantise(16.0 + 219.0 * yy, j->dither, j->frame, 0, x, y);
        }
    }
    for (uint32_t cy = j->crow0; cy < j->crow1; cy++) {
        uint32_t ya = cy * j->sy, yb = ya + (j->sy - 1);
        if (yb >= img->height) yb = img->height - 1;
        const uint16_t *ra = img->rgb + (size_t)ya * img->width * 3;
        const uint16_t *rb = img->rgb + (size_t)yb * img->width * 3;
        for (uint32_t cx = 0; cx < j->cw; cx++) {
            uint32_t xa = cx * j->sx, xb = xa + (j->sx - 1);
            if (xb >= img->width) xb = img->width - 1;
            double n = (double)(j->sx * j->sy);
            double r, g, b;
            if (j->sx == 1 && j->sy == 1) {
                r = ra[3 * xa];
                g = ra[3 * xa + 1];
                b = ra[3 * xa + 2];
            } else if (j->sy == 1) {
                r = (double)ra[3 * xa] + ra[3 * xb];
                g = (double)ra[3 * xa + 1] + ra[3 * xb + 1];
                b = (double)ra[3 * xa + 2] + ra[3 * xb + 2];
                r /= n, g /= n, b /= n;
            } else {
                r = (double)ra[3 * xa] + ra[3 * xb] + rb[3 * xa] + rb[3 * xb];
                g = (double)ra[3 * xa + 1] + ra[3 * xb + 1] + rb[3 * xa + 1] + rb[3 * xb + 1];
                b = (double)ra[3 * xa + 2] + ra[3 * xb + 2] + rb[3 * xa + 2] + rb[3 * xb + 2];
                r /= n, g /= n, b /= n;
            }
            r *= s, g *= s, b *= s;
            double yy = KR * r + KG * g + KB * b;
            size_t at = (size_t)cy * j->cw + cx;
            j->cb[at] = quantise(128.0 + 112.0 * (b - yy) / (1.0 - KB), j->dither, j->frame, 1, cx, cy);
            j->cr[at] = quantise(128.0 + 112.0 * (r - yy) / (1.0 - KR), j->dither, j->frame, 2, cx, cy);
        }
    }
    return NULL;
}

/* Convert `img` into planes stored consecutively in `buf`. */
static void convert(const struct image *img, const struct options *o, uint32_t frame,
                    uint8_t *buf) {
    int sx = o->chroma == C444 ? 1 : 2, sy = o->chroma == C420 ? 2 : 1;
    uint32_t cw = (img->width + sx - 1) / sx, ch = (img->height + sy - 1) / sy;
    size_t luma = (size_t)img->width * img->height, chroma = (size_t)cw * ch;
    int n = o->threads < 1 ? 1 : o->threads;
    if ((uint32_t)n > ch) n = (int)ch;
    if (n < 1) n = 1;
    struct job jobs[64];
    pthread_t tids[64];
    if (n > 64) n = 64;
    for (int i = 0; i < n; i++) {
        struct job *j = &jobs[i];
        j->img = img;
        j->y = buf;
        j->cb = buf + luma;
        j->cr = buf + luma + chroma;
        j->cw = cw;
        j->sx = sx;
        j->sy = sy;
        j->dither = o->dither;
        j->frame = frame;
        j->crow0 = (uint32_t)((uint64_t)ch * i / n);
        j->crow1 = (uint32_t)((uint64_t)ch * (i + 1) / n);
        j->row0 = j->crow0 * sy;
        j->row1 = i == n - 1 ? img->height : j->crow1 * sy;
        if (j->row1 > img->height) j->row1 = img->height;
    }
    for (int i = 1; i < n; i++)
        if (pthread_create(&tids[i], NULL, convert_rows, &jobs[i])) {
            convert_rows(&jobs[i]); /* no thread: do it here */
            tids[i] = 0;
        }
    convert_rows(&jobs[0]);
    for (int i = 1; i < n; i++)
        if (tids[i]) pthread_join(tids[i], NULL);
}

/* ------------------------------------------------------------------ input frames */

/* Split a printf pattern around its single %d conversion. Returns 0 if it has one. */
static int split_pattern(const char *pattern, char *dir, size_t dlen, const char **base) {
    const char *slash = strrchr(pattern, '/');
    *base = slash ? slash + 1 : pattern;
    size_t n = slash ? (size_t)(slash - pattern) : 0;
    if (!slash) snprintf(dir, dlen, ".");
    else if (n == 0) snprintf(dir, dlen, "/");
    else snprintf(dir, dlen, "%.*s", (int)n, pattern);
    const char *pct = strchr(*base, '%');
    if (!pct || strchr(pattern, '%') != pct) return -1;
    const char *q = pct + 1;
    while (*q >= '0' && *q <= '9') q++;
    if (*q != 'd' || strchr(q + 1, '%')) return -1;
    return 0;
}

static int format_frame(char *out, size_t len, const char *pattern, long n) {
    int w = snprintf(out, len, pattern, (int)n);
    return w < 0 || (size_t)w >= len ? -1 : 0;
}

/* The lowest frame number whose file exists for `pattern`, or -1. */
static long lowest_frame(const char *pattern) {
    char dir[PATH_MAX];
    const char *base;
    if (split_pattern(pattern, dir, sizeof dir, &base)) fail(pattern, "input pattern must have one %%d conversion");
    const char *pct = strchr(base, '%');
    size_t prefix = (size_t)(pct - base);
    const char *suffix = strchr(pct, 'd') + 1;
    size_t slen = strlen(suffix);
    DIR *d = opendir(dir);
    if (!d) return -1;
    long best = -1;
    struct dirent *e;
    char path[PATH_MAX];
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= prefix + slen || strncmp(e->d_name, base, prefix) ||
            strcmp(e->d_name + len - slen, suffix))
            continue;
        char *end;
        errno = 0;
        long v = strtol(e->d_name + prefix, &end, 10);
        if (errno || end != e->d_name + len - slen || v < 0 || v > INT_MAX) continue;
        if (format_frame(path, sizeof path, pattern, v)) continue;
        const char *name = strrchr(path, '/');
        if (strcmp(name ? name + 1 : path, e->d_name)) continue; /* padding differs */
        if (best < 0 || v < best) best = v;
    }
    closedir(d);
    return best;
}

/* ------------------------------------------------------------------ output */

static const char *chroma_tag(enum chroma c) {
    return c == C420 ? "C420jpeg" : c == C422 ? "C422jpeg" : "C444";
}

/* Check an existing Y4M header; returns 0 if it matches. */
static int header_matches(FILE *f, uint32_t w, uint32_t h, enum chroma c, char *why, size_t n) {
    char line[512];
    if (!fgets(line, sizeof line, f) || strncmp(line, "YUV4MPEG2 ", 10)) {
        snprintf(why, n, "existing file is not a Y4M stream");
        return -1;
    }
    unsigned long fw = 0, fh = 0;
    const char *tag = "C420jpeg";
    char found[64] = "";
    for (char *tok = strtok(line + 10, " \n"); tok; tok = strtok(NULL, " \n")) {
        if (tok[0] == 'W') fw = strtoul(tok + 1, NULL, 10);
        else if (tok[0] == 'H') fh = strtoul(tok + 1, NULL, 10);
        else if (tok[0] == 'C') snprintf(found, sizeof found, "%s", tok);
    }
    if (found[0]) tag = found;
    if (fw != w || fh != h) {
        snprintf(why, n, "frame size %ux%u differs from the existing file's %lux%lu", w, h, fw, fh);
        return -1;
    }
    if (strcmp(tag, chroma_tag(c)) && !(c == C420 && !strncmp(tag, "C420", 4))) {
        snprintf(why, n, "chroma %s differs from the existing file's %s", chroma_tag(c), tag);
        return -1;
    }
    return 0;
}

static void usage(FILE *to) {
    fputs("usage: png2y4m [options] INPUT\n"
          "  INPUT is a PNG file or a printf pattern (dir/%08d.png) matching a run of\n"
          "  consecutive frames starting at the lowest number present.\n"
          "  -o, --output FILE   Y4M file to write (required)\n"
          "  -i                  incremental: append frames to an existing Y4M\n"
          "  -d                  delete each PNG once its frame is written\n"
          "      --chroma-444    no chroma subsampling\n"
          "      --chroma-422    horizontal chroma subsampling (default 4:2:0)\n"
          "  -s, -S N            pixel aspect numerator, denominator (default 0:0)\n"
          "  -f, -F N            frame rate numerator, denominator (default 24/1)\n"
          "      --no-dither     round to nearest instead of TPDF dithering\n"
          "      --threads N     conversion threads (default 1; same output)\n"
          "  -h, --help          this help\n",
          to);
}

static int parse_int(const char *opt, const char *v, int min) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > INT_MAX) fail(opt, "'%s' is not an integer >= %d", v, min);
    return (int)n;
}

int main(int argc, char **argv) {
    struct options o = {NULL, 0, 0, 1, 1, C420, 24, 1, 0, 0};
    static const struct option longs[] = {
        {"output", required_argument, NULL, 'o'}, {"chroma-444", no_argument, NULL, 1},
        {"chroma-422", no_argument, NULL, 2},     {"no-dither", no_argument, NULL, 3},
        {"threads", required_argument, NULL, 4},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:ids:S:f:F:h", longs, NULL)) != -1) {
        switch (c) {
        case 'o': o.output = optarg; break;
        case 'i': o.incremental = 1; break;
        case 'd': o.delete_input = 1; break;
        case 's': o.aspect_n = parse_int("-s", optarg, 0); break;
        case 'S': o.aspect_d = parse_int("-S", optarg, 0); break;
        case 'f': o.fps_n = parse_int("-f", optarg, 1); break;
        case 'F': o.fps_d = parse_int("-F", optarg, 1); break;
        case 1: o.chroma = C444; break;
        case 2: o.chroma = C422; break;
        case 3: o.dither = 0; break;
        case 4: o.threads = parse_int("--threads", optarg, 1); break;
        case 'h': usage(stdout); return 0;
        case ':': fail("options", "option '%s' needs a value (see --help)", argv[optind - 1]); break;
        default:
            if (optopt) fail("options", "unknown option '-%c' (see --help)", optopt);
            fail("options", "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (!o.output) fail("options", "-o/--output is required (see --help)");
    if (optind != argc - 1) fail("options", "exactly one INPUT is needed (see --help)");
    const char *input = argv[optind];
    int pattern = strchr(input, '%') != NULL;
    long first = 0;
    if (pattern) {
        first = lowest_frame(input);
        if (first < 0) fail(input, "no input frame matches this pattern");
    }

    /* The output is opened once the first frame has decoded, so a bad input leaves it as
     * it was. */
    int fd = -1;
    off_t size = 0;
    char path[PATH_MAX], why[300];
    uint32_t w0 = 0, h0 = 0;
    uint8_t *buf = NULL;
    size_t frames = 0;
    for (long n = first;; n++) {
        if (pattern) {
            if (format_frame(path, sizeof path, input, n)) fail(input, "frame path too long");
            if (n > first && access(path, F_OK)) break;
        } else {
            if (n > first) break;
            snprintf(path, sizeof path, "%s", input);
        }
        struct image img;
        if (decode_png(path, &img, why, sizeof why)) fail(path, "%s", why);
        if (frames == 0) {
            fd = open(o.output, O_RDWR | O_CREAT | (o.incremental ? 0 : O_TRUNC), 0644);
            if (fd < 0) fail(o.output, "cannot open for writing: %s", strerror(errno));
            size = lseek(fd, 0, SEEK_END);
            if (size < 0) fail(o.output, "cannot seek: %s", strerror(errno));
            w0 = img.width;
            h0 = img.height;
            if (size > 0) {
                FILE *f = fdopen(dup(fd), "r");
                if (!f) fail(o.output, "cannot read: %s", strerror(errno));
                rewind(f);
                int bad = header_matches(f, w0, h0, o.chroma, why, sizeof why);
                fclose(f);
                if (bad) fail(o.output, "%s", why);
            }
        } else if (img.width != w0 || img.height != h0) {
            fail(path, "frame size %ux%u differs from the first frame's %ux%u", img.width,
                 img.height, w0, h0);
        }
        int sx = o.chroma == C444 ? 1 : 2, sy = o.chroma == C420 ? 2 : 1;
        size_t cw = (w0 + sx - 1) / sx, ch = (h0 + sy - 1) / sy;
        size_t planes = (size_t)w0 * h0 + 2 * cw * ch;
        char header[160] = "";
        int hl = 0;
        if (size == 0 && frames == 0)
            hl = snprintf(header, sizeof header, "YUV4MPEG2 W%u H%u F%d:%d Ip A%d:%d %s\n", w0, h0,
                          o.fps_n, o.fps_d, o.aspect_n, o.aspect_d, chroma_tag(o.chroma));
        size_t total = (size_t)hl + 6 + planes;
        if (!buf) buf = malloc(total);
        if (!buf) fail(path, "out of memory");
        memcpy(buf, header, (size_t)hl);
        memcpy(buf + hl, "FRAME\n", 6);
        convert(&img, &o, (uint32_t)n, buf + hl + 6);
        free(img.rgb);
        off_t at = lseek(fd, 0, SEEK_END);
        size_t done = 0;
        while (done < total) {
            ssize_t k = write(fd, buf + done, total - done);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                int e = errno;
                if (ftruncate(fd, at)) { /* nothing more can be done */ }
                fail(o.output, "write failed: %s", strerror(k < 0 ? e : ENOSPC));
            }
            done += (size_t)k;
        }
        if (o.delete_input) {
            if (fdatasync(fd) && errno != EINVAL) fail(o.output, "sync failed: %s", strerror(errno));
            if (unlink(path)) fail(path, "cannot delete: %s", strerror(errno));
        }
        frames++;
        /* After the first frame the header exists, and `buf` is large enough again. */
        size = 1;
    }
    free(buf);
    if (close(fd)) fail(o.output, "close failed: %s", strerror(errno));
    return 0;
}
