/*
 * png2y4m: convert a run of PNG frames into a Y4M (YUV4MPEG2) stream.
 *
 * Theory of operation
 * -------------------
 * Decoding has two paths that give the same samples:
 *
 * - The fast path takes non-interlaced 8- and 16-bit gray, gray+alpha, RGB and RGBA images
 *   (what cameras, renderers and ffmpeg write). It reads the file into memory, checks the
 *   chunk layout and the CRC of every critical chunk, joins the IDAT payloads in place,
 *   inflates them in one call to libdeflate and undoes the PNG row filters itself, lazily,
 *   a few rows ahead of the conversion so the rows are still in cache when converted.
 * - Everything else (palette, 1/2/4-bit gray, interlaced) goes through libpng with
 *   transforms to 16-bit big-endian R'G'B'. Whenever the fast path meets anything it does
 *   not expect (a bad CRC, a damaged zlib stream, an odd chunk order, a bad filter type),
 *   it hands the file to libpng too, so every error message and every tolerance for
 *   harmless damage is libpng's.
 *
 * Conversion reads samples as 16 bits (8-bit v counts as v * 257, exactly v / 255 of full
 * scale), so 8-bit and 16-bit input go through the same math: R'G'B' -> Y'CbCr BT.709,
 * studio range (Y 16..235, C 16..240), with chroma computed from the box average of R'G'B'
 * over 2x2 (4:2:0) or 2x1 (4:2:2) pixels, the last row/column replicated for odd sizes.
 * The weights are folded into single-precision coefficients; the result differs from the
 * float64 reference by well under 1e-3 code values before quantisation.
 *
 * Quantisation rounds to nearest with --no-dither. By default triangular (TPDF) noise of
 * +-1 LSB is added first; the noise of a sample is a hash of (frame, plane, x, y), so the
 * output depends only on the input, never on --threads or on which CPU features are used.
 * The frame index is the frame's position in the output stream (with -i, counting the
 * frames already there), so a chunk built one frame per process is dithered exactly like
 * the same chunk built by one process.
 *
 * Threads share one frame: the chroma rows are cut into chunks taken in order; a thread
 * that needs rows not yet unfiltered unfilters them under a lock (filters are sequential),
 * then converts its chunk without it.
 *
 * Each frame is converted into one buffer and written with a single write; if anything
 * fails the output is truncated back to where the frame began, so a Y4M never holds a
 * partial frame. With -i the existing header must match (size and chroma) or the file is
 * left untouched. With -d each PNG is deleted only after its frame is written.
 *
 * Memory is bounded before it is asked for: a header that claims more pixel data than the
 * file could inflate to is refused, and so is an image with more than --max-pixels pixels
 * (default 7680x4320, 8K UHD), whatever its bit depth: a 1-bit image compresses 48:1 better
 * than 16-bit RGB, but is decoded to 6 bytes a pixel all the same, so a 49 KB file of
 * 20000x20000 would otherwise take 2.4 GB for its pixels and more for its planes.
 * The output may not be one of the inputs (-o naming the input file, or a file the input
 * pattern matches): it would be read while it is written, or deleted by -d.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <emmintrin.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libdeflate.h>
#include <limits.h>
#include <png.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SIDE 65536u /* the largest width or height accepted */
#define DEFAULT_MAX_PIXELS (7680ull * 4320ull) /* 8K UHD */

enum chroma { C420, C422, C444 };

struct options {
    const char *output;
    int incremental, delete_input, dither, threads;
    enum chroma chroma;
    int fps_n, fps_d, aspect_n, aspect_d;
    unsigned long long max_pixels;
};

/* A decoded frame: row y starts at data + y * stride; samples are 8-bit or 16-bit
 * big-endian, `channels` per pixel (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA). When `filters`
 * is set, rows [ready, height) still carry their PNG filter (type byte at row - 1). */
struct frame {
    uint32_t width, height;
    int channels, depth;
    size_t stride;
    uint8_t *data;
    int filtered;
    atomic_uint ready;
    pthread_mutex_t lock;
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

/* Buffers reused from frame to frame (no page faults after the first frame). */
struct buffer {
    uint8_t *p;
    size_t size;
};

static int reserve(struct buffer *b, size_t n) {
    if (n <= b->size) return 0;
    free(b->p);
    b->p = malloc(n);
    b->size = b->p ? n : 0;
    return b->p ? 0 : -1;
}

/* What one decoding thread owns. */
struct ctx {
    struct buffer file, pixels;
    struct libdeflate_decompressor *inflater;
    unsigned long long max_pixels; /* --max-pixels */
};

/* Whether w x h is above --max-pixels; if so, *why says so with the numbers. The bound
 * is on pixels, not on the file: every image is decoded to 16-bit RGB (6 bytes a pixel). */
static int too_many_pixels(const struct ctx *cx, uint32_t w, uint32_t h, char *why,
                           size_t why_len) {
    unsigned long long n = (unsigned long long)w * h;
    if (n <= cx->max_pixels) return 0;
    snprintf(why, why_len,
             "image is %ux%u = %llu pixels (%llu MB decoded), above the limit of %llu pixels "
             "(--max-pixels; the default is 8K UHD, 7680x4320)",
             w, h, n, n * 6 / 1000000, cx->max_pixels);
    return 1;
}

/* ------------------------------------------------------------------ libpng path */

/* Deflate expands at most 1032:1 (258 bytes from a 1-bit length and a 1-bit distance code),
 * so a file of `file_len` bytes cannot hold more pixel data than this bound. A header that
 * claims more is refused before any pixel buffer is allocated: a 100-byte file must not make
 * us ask for gigabytes. */
static int too_big_for_file(uint32_t w, uint32_t h, int channels, int depth, uint64_t file_len) {
    uint64_t pixel_bytes = (uint64_t)w * h * (uint64_t)channels * (uint64_t)depth / 8;
    return pixel_bytes / 1032 > file_len;
}

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

/* Decode `path` with libpng into 16-bit big-endian RGB. Returns -1 with *why set. */
static int decode_libpng(struct ctx *cx, const char *path, struct frame *img, char *why, size_t why_len) {
    FILE *volatile f = fopen(path, "rb");
    png_structp png = NULL;
    png_infop info = NULL;
    png_bytep *volatile rows = NULL;
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
        if (!strcmp(err.message, "Read Error")) /* libpng's word for a short read */
            snprintf(why, why_len, "truncated PNG (the file ends early)");
        else
            snprintf(why, why_len, "corrupt PNG: %s", err.message[0] ? err.message : "error");
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_set_user_limits(png, MAX_SIDE, MAX_SIDE);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    struct stat st;
    if (!fstat(fileno(f), &st) && S_ISREG(st.st_mode) &&
        too_big_for_file(w, h, png_get_channels(png, info), depth, (uint64_t)st.st_size))
        png_error(png, "the file is too short for the image size in its header");
    if (too_many_pixels(cx, w, h, why, why_len)) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return -1;
    }
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_expand_16(png); /* exact: v8 * 257 */
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 16)
        png_error(png, "unsupported pixel layout");

    size_t stride = (size_t)w * 6;
    if (reserve(&cx->pixels, stride * h)) png_error(png, "out of memory");
    rows = malloc(h * sizeof(png_bytep));
    if (!rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = cx->pixels.p + stride * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    fclose(f);
    img->width = w;
    img->height = h;
    img->channels = 3;
    img->depth = 16;
    img->stride = stride;
    img->data = cx->pixels.p;
    img->filtered = 0;
    atomic_store(&img->ready, h);
    return 0;
}

/* ------------------------------------------------------------------ fast path */

static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Read the whole file into cx->file. Returns its length, or -1 with *why set. */
static long read_file(struct ctx *cx, const char *path, char *why, size_t why_len) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        snprintf(why, why_len, "%s", strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)1 << 40) {
        close(fd);
        return -2; /* let libpng deal with it */
    }
    size_t len = (size_t)st.st_size, done = 0;
    if (reserve(&cx->file, len + 1)) {
        close(fd);
        return -2;
    }
    while (done < len) {
        ssize_t k = read(fd, cx->file.p + done, len - done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        done += (size_t)k;
    }
    close(fd);
    return (long)done;
}

/* Decode `path` without libpng. Returns 0 on success, 1 when libpng must take the file
 * (unsupported or damaged: libpng then reports the error), -1 with *why set. */
static int decode_fast(struct ctx *cx, const char *path, struct frame *img, char *why, size_t why_len) {
    static const uint8_t signature[8] = {137, 'P', 'N', 'G', '\r', '\n', 26, '\n'};
    long got = read_file(cx, path, why, why_len);
    if (got == -1) return -1;
    if (got < 0) return 1;
    size_t len = (size_t)got;
    uint8_t *b = cx->file.p;
    if (len < 8 || memcmp(b, signature, 8)) {
        snprintf(why, why_len, "not a PNG file");
        return -1;
    }
    if (len < 33 || be32(b + 8) != 13 || memcmp(b + 12, "IHDR", 4) ||
        libdeflate_crc32(0, b + 12, 17) != be32(b + 29))
        return 1;
    uint32_t w = be32(b + 16), h = be32(b + 20);
    int depth = b[24], type = b[25];
    if (w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || (depth != 8 && depth != 16) ||
        (type != 0 && type != 2 && type != 4 && type != 6) || b[26] || b[27] || b[28])
        return 1;
    int channels = type == 0 ? 1 : type == 4 ? 2 : type == 2 ? 3 : 4;
    if (too_big_for_file(w, h, channels, depth, len)) return 1; /* libpng says why */
    if (too_many_pixels(cx, w, h, why, why_len)) return -1;

    /* Walk the chunks; move the IDAT payloads together at the start of the buffer. */
    size_t pos = 33, idat = 0;
    int state = 0; /* 0 before IDAT, 1 in the IDAT run, 2 after it */
    for (;;) {
        if (len - pos < 12) return 1;
        uint32_t n = be32(b + pos);
        if (n > 0x7fffffffu || len - pos - 12 < n) return 1;
        const uint8_t *t = b + pos + 4;
        int critical = !(t[0] & 0x20);
        if (critical && libdeflate_crc32(0, t, (size_t)n + 4) != be32(b + pos + 8 + n)) return 1;
        if (!memcmp(t, "IDAT", 4)) {
            if (state == 2) return 1;
            state = 1;
            memmove(b + idat, b + pos + 8, n);
            idat += n;
        } else {
            if (state == 1) state = 2;
            if (!memcmp(t, "IEND", 4)) break;
            if (critical && memcmp(t, "PLTE", 4)) return 1; /* IHDR again, or unknown */
        }
        pos += 12 + (size_t)n;
    }
    if (!state) return 1;

    size_t row = (size_t)w * channels * (depth / 8), stride = row + 1;
    if (reserve(&cx->pixels, stride * h + 16)) return 1; /* slack for 8-byte loads */
    if (!cx->inflater && !(cx->inflater = libdeflate_alloc_decompressor())) return 1;
    if (libdeflate_zlib_decompress(cx->inflater, b, idat, cx->pixels.p, stride * h, NULL) !=
        LIBDEFLATE_SUCCESS)
        return 1;
    for (uint32_t y = 0; y < h; y++)
        if (cx->pixels.p[stride * y] > 4) return 1;
    img->width = w;
    img->height = h;
    img->channels = channels;
    img->depth = depth;
    img->stride = stride;
    img->data = cx->pixels.p + 1;
    img->filtered = 1;
    atomic_store(&img->ready, 0);
    return 0;
}

static int decode_png(struct ctx *cx, const char *path, struct frame *img, char *why,
                      size_t why_len) {
    int r = decode_fast(cx, path, img, why, why_len);
    return r == 1 ? decode_libpng(cx, path, img, why, why_len) : r;
}

/* ------------------------------------------------------------------ unfiltering */

static inline int paeth(int a, int b, int c) {
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Undo the filter of one row in place; `prev` is the previous (unfiltered) row or NULL. */
static void unfilter_row(uint8_t *cur, const uint8_t *prev, size_t n, size_t bpp, int type) {
    size_t i;
    switch (type) {
    case 1:
        for (i = bpp; i < n; i++) cur[i] = (uint8_t)(cur[i] + cur[i - bpp]);
        break;
    case 2:
        if (prev)
            for (i = 0; i < n; i++) cur[i] = (uint8_t)(cur[i] + prev[i]);
        break;
    case 3:
        if (prev) {
            for (i = 0; i < bpp; i++) cur[i] = (uint8_t)(cur[i] + (prev[i] >> 1));
            for (; i < n; i++) cur[i] = (uint8_t)(cur[i] + ((cur[i - bpp] + prev[i]) >> 1));
        } else {
            for (i = bpp; i < n; i++) cur[i] = (uint8_t)(cur[i] + (cur[i - bpp] >> 1));
        }
        break;
    case 4:
        if (prev) {
            for (i = 0; i < bpp; i++) cur[i] = (uint8_t)(cur[i] + prev[i]);
            for (; i < n; i++)
                cur[i] = (uint8_t)(cur[i] + paeth(cur[i - bpp], prev[i], prev[i - bpp]));
        } else {
            for (i = bpp; i < n; i++) cur[i] = (uint8_t)(cur[i] + cur[i - bpp]);
        }
        break;
    default:
        break;
    }
}

/* Sub, Average and Paeth one pixel at a time in 16-bit SSE2 lanes (bpp <= 8 bytes). The
 * loads may read up to 7 bytes past a row (the pixel buffer has slack); only bpp bytes are
 * stored. Same results as unfilter_row. */
static inline __attribute__((always_inline)) void
unfilter_sse2(uint8_t *cur, const uint8_t *prev, size_t n, size_t bpp, int type) {
    const __m128i zero = _mm_setzero_si128();
    __m128i a = zero, c = zero;
    for (size_t i = 0; i + bpp <= n; i += bpp) {
        uint64_t xw, bw = 0, ow;
        memcpy(&xw, cur + i, 8);
        if (prev) memcpy(&bw, prev + i, 8);
        __m128i x = _mm_cvtsi64_si128((long long)xw);
        __m128i b = _mm_unpacklo_epi8(_mm_cvtsi64_si128((long long)bw), zero);
        __m128i pred;
        if (type == 1) {
            pred = a;
        } else if (type == 3) {
            pred = _mm_srli_epi16(_mm_add_epi16(a, b), 1);
        } else {
            __m128i bc = _mm_sub_epi16(b, c), ac = _mm_sub_epi16(a, c), s = _mm_add_epi16(bc, ac);
            __m128i pa = _mm_max_epi16(bc, _mm_sub_epi16(zero, bc));
            __m128i pb = _mm_max_epi16(ac, _mm_sub_epi16(zero, ac));
            __m128i pc = _mm_max_epi16(s, _mm_sub_epi16(zero, s));
            __m128i low = _mm_min_epi16(_mm_min_epi16(pa, pb), pc);
            __m128i use_a = _mm_cmpeq_epi16(pa, low);
            __m128i use_b = _mm_andnot_si128(use_a, _mm_cmpeq_epi16(pb, low));
            __m128i use_c = _mm_andnot_si128(_mm_or_si128(use_a, use_b), _mm_set1_epi16(-1));
            pred = _mm_or_si128(_mm_or_si128(_mm_and_si128(use_a, a), _mm_and_si128(use_b, b)),
                                _mm_and_si128(use_c, c));
        }
        __m128i out = _mm_add_epi8(x, _mm_packus_epi16(pred, zero));
        ow = (uint64_t)_mm_cvtsi128_si64(out);
        memcpy(cur + i, &ow, bpp);
        a = _mm_unpacklo_epi8(out, zero);
        c = b;
    }
}

static void unfilter(uint8_t *cur, const uint8_t *prev, size_t n, size_t bpp, int type) {
    if (type == 0 || type == 2 || (type == 4 && !prev) || bpp > 8) {
        unfilter_row(cur, prev, n, bpp, type == 4 && !prev ? 1 : type);
        return;
    }
    switch (bpp) {
    case 3: unfilter_sse2(cur, prev, n, 3, type); break;
    case 4: unfilter_sse2(cur, prev, n, 4, type); break;
    case 6: unfilter_sse2(cur, prev, n, 6, type); break;
    case 8: unfilter_sse2(cur, prev, n, 8, type); break;
    default: unfilter_row(cur, prev, n, bpp, type); break;
    }
}

/* Make rows [0, upto) of `img` plain. */
static void need_rows(struct frame *img, uint32_t upto) {
    if (!img->filtered || atomic_load_explicit(&img->ready, memory_order_acquire) >= upto) return;
    pthread_mutex_lock(&img->lock);
    uint32_t y = atomic_load_explicit(&img->ready, memory_order_relaxed);
    size_t n = img->stride - 1, bpp = (size_t)img->channels * (img->depth / 8);
    for (; y < upto; y++) {
        uint8_t *cur = img->data + img->stride * y;
        unfilter(cur, y ? cur - img->stride : NULL, n, bpp, cur[-1]);
        atomic_store_explicit(&img->ready, y + 1, memory_order_release);
    }
    pthread_mutex_unlock(&img->lock);
}

/* ------------------------------------------------------------------ conversion */

#define KR 0.2126
#define KB 0.0722
#define KG (1.0 - KR - KB)

/* Per-sample TPDF noise in (-1, 1) LSB: two 16-bit halves of a hash of (seed, x). */
static inline uint32_t mix(uint32_t h) {
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}

static inline uint32_t row_seed(uint32_t frame, uint32_t plane, uint32_t y) {
    return mix(mix(frame * 0x9E3779B1u + plane) ^ (y * 0x85EBCA77u + 0x165667B1u));
}

static inline float tpdf(uint32_t seed, uint32_t x) {
    uint32_t h = mix(seed ^ (x * 0xC2B2AE3Du));
    return (float)((int32_t)((h & 0xFFFF) + (h >> 16)) - 65535) * (1.0f / 65536.0f);
}

/* Round to nearest and clamp to 0..255, branch-free so that loops vectorise. */
static inline uint8_t clamp8(float v) {
    int32_t i = (int32_t)(v + 0.5f); /* truncation is floor here: anything below 0 clamps */
    i = i < 0 ? 0 : i;
    i = i > 255 ? 255 : i;
    return (uint8_t)i;
}

struct coeffs {
    float yr, yg, yb;        /* luma per 16-bit unit */
    float br, bg, bb;        /* Cb per unit of the chroma box sum */
    float rr, rg, rb;        /* Cr per unit of the chroma box sum */
};

static struct coeffs make_coeffs(int box) {
    const double unit = 1.0 / 65535.0, cu = unit / box;
    struct coeffs k;
    k.yr = (float)(219.0 * KR * unit);
    k.yg = (float)(219.0 * KG * unit);
    k.yb = (float)(219.0 * KB * unit);
    k.br = (float)(-112.0 * KR / (1.0 - KB) * cu);
    k.bg = (float)(-112.0 * KG / (1.0 - KB) * cu);
    k.bb = (float)(112.0 * cu);
    k.rr = (float)(112.0 * cu);
    k.rg = (float)(-112.0 * KG / (1.0 - KR) * cu);
    k.rb = (float)(-112.0 * KB / (1.0 - KR) * cu);
    return k;
}

/* Sample c (0 R, 1 G, 2 B) of pixel x as a 16-bit value. */
#define SAMPLE(p, x, C, D, c)                                                                 \
    ((D) == 16 ? (uint32_t)((p)[2 * ((x) * (C) + ((C) >= 3 ? (c) : 0))] << 8 |                  \
                            (p)[2 * ((x) * (C) + ((C) >= 3 ? (c) : 0)) + 1])                    \
               : (uint32_t)(p)[(x) * (C) + ((C) >= 3 ? (c) : 0)] * 257u)

/* Per-thread rows of float samples: R, G, B of one image row, and the sums over the rows
 * of a chroma row (one extra column for the replicated last column of odd widths). */
struct scratch {
    float *r, *g, *b, *sr, *sg, *sb;
};

/* One image row as float R, G, B; specialised by channels C and depth D when inlined. */
static inline __attribute__((always_inline)) void
load_row(const uint8_t *p, uint32_t w, int C, int D, float *restrict r, float *restrict g,
         float *restrict b) {
    for (uint32_t x = 0; x < w; x++) {
        r[x] = (float)SAMPLE(p, x, C, D, 0);
        g[x] = (float)SAMPLE(p, x, C, D, 1);
        b[x] = (float)SAMPLE(p, x, C, D, 2);
    }
}

static inline __attribute__((always_inline)) void
luma_row(const float *restrict r, const float *restrict g, const float *restrict b,
         uint8_t *restrict out, uint32_t w, const struct coeffs *k, int dither, uint32_t seed) {
    const float yr = k->yr, yg = k->yg, yb = k->yb;
    if (dither) {
        for (uint32_t x = 0; x < w; x++)
            out[x] = clamp8(16.0f + yr * r[x] + yg * g[x] + yb * b[x] + tpdf(seed, x));
    } else {
        for (uint32_t x = 0; x < w; x++) out[x] = clamp8(16.0f + yr * r[x] + yg * g[x] + yb * b[x]);
    }
}

/* One chroma row from the row sums, pairing columns when sx is 2. */
#define CHROMA_LOOP(GET, DITHER)                                                                \
    for (uint32_t x = 0; x < cw; x++) {                                                         \
        float r = GET(sr, x), g = GET(sg, x), b = GET(sb, x);                                   \
        float u = 128.0f + br * r + bg * g + bb * b;                                            \
        float v = 128.0f + rr * r + rg * g + rb * b;                                            \
        if (DITHER) {                                                                           \
            u += tpdf(seed_b, x);                                                               \
            v += tpdf(seed_r, x);                                                               \
        }                                                                                       \
        cb[x] = clamp8(u);                                                                      \
        cr[x] = clamp8(v);                                                                      \
    }
#define PAIR(a, x) ((a)[2 * (x)] + (a)[2 * (x) + 1])
#define ONE(a, x) ((a)[x])

static inline __attribute__((always_inline)) void
chroma_row(const float *restrict sr, const float *restrict sg, const float *restrict sb,
           uint8_t *restrict cb, uint8_t *restrict cr, uint32_t cw, int sx,
           const struct coeffs *k, int dither, uint32_t seed_b, uint32_t seed_r) {
    const float br = k->br, bg = k->bg, bb = k->bb, rr = k->rr, rg = k->rg, rb = k->rb;
    if (sx == 2 && dither) {
        CHROMA_LOOP(PAIR, 1)
    } else if (sx == 2) {
        CHROMA_LOOP(PAIR, 0)
    } else if (dither) {
        CHROMA_LOOP(ONE, 1)
    } else {
        CHROMA_LOOP(ONE, 0)
    }
}

/* sum[x] += row[x] */
static inline __attribute__((always_inline)) void add_row(float *restrict sum,
                                                          const float *restrict row, uint32_t w) {
    for (uint32_t x = 0; x < w; x++) sum[x] += row[x];
}

struct work {
    struct frame *img;
    uint8_t *y, *cb, *cr;
    uint32_t cw, ch, frame;
    int sx, sy, dither;
    struct coeffs k;
    atomic_uint next; /* next chunk of chroma rows to convert */
};

#define CHUNK 8 /* chroma rows per work item */

/* Chroma rows [c0, c1) and their luma rows. Row sums are exact in float (at most four
 * 16-bit values); the last row of an odd height counts twice, like the last column. */
#define CONVERT_CHUNK(C, D)                                                                     \
    for (uint32_t cy = c0; cy < c1; cy++) {                                                     \
        uint32_t ya = cy * (uint32_t)wk->sy;                                                    \
        for (uint32_t i = 0; i < (uint32_t)wk->sy; i++) {                                       \
            uint32_t y = ya + i < h ? ya + i : h - 1;                                            \
            load_row(img->data + img->stride * y, w, C, D, t->r, t->g, t->b);                   \
            if (ya + i < h)                                                                     \
                luma_row(t->r, t->g, t->b, wk->y + (size_t)w * y, w, &wk->k, wk->dither,        \
                         row_seed(wk->frame, 0, y));                                            \
            if (i == 0) {                                                                       \
                memcpy(t->sr, t->r, w * sizeof(float));                                         \
                memcpy(t->sg, t->g, w * sizeof(float));                                         \
                memcpy(t->sb, t->b, w * sizeof(float));                                         \
            } else {                                                                            \
                add_row(t->sr, t->r, w);                                                        \
                add_row(t->sg, t->g, w);                                                        \
                add_row(t->sb, t->b, w);                                                        \
            }                                                                                   \
        }                                                                                       \
        t->sr[w] = t->sr[w - 1];                                                                \
        t->sg[w] = t->sg[w - 1];                                                                \
        t->sb[w] = t->sb[w - 1];                                                                \
        chroma_row(t->sr, t->sg, t->sb, wk->cb + (size_t)wk->cw * cy,                           \
                   wk->cr + (size_t)wk->cw * cy, wk->cw, wk->sx, &wk->k, wk->dither,            \
                   row_seed(wk->frame, 1, cy), row_seed(wk->frame, 2, cy));                     \
    }

#define CASE(C, D)                                                                              \
    case (C) * 100 + (D):                                                                       \
        CONVERT_CHUNK(C, D) break;

__attribute__((target_clones("avx2", "default"))) static void
convert_chunk(struct work *wk, struct scratch *t, uint32_t c0, uint32_t c1) {
    struct frame *img = wk->img;
    uint32_t w = img->width, h = img->height;
    switch (img->channels * 100 + img->depth) {
        CASE(1, 8)
        CASE(2, 8)
        CASE(3, 8)
        CASE(4, 8)
        CASE(1, 16)
        CASE(2, 16)
        CASE(3, 16)
        CASE(4, 16)
    default:
        break;
    }
}

static void *worker(void *arg) {
    struct work *wk = arg;
    size_t n = (size_t)wk->img->width + 2;
    float *mem = malloc(6 * n * sizeof(float));
    if (!mem) return arg; /* the caller converts what is left */
    struct scratch t = {mem, mem + n, mem + 2 * n, mem + 3 * n, mem + 4 * n, mem + 5 * n};
    for (;;) {
        uint32_t c0 = atomic_fetch_add(&wk->next, CHUNK);
        if (c0 >= wk->ch) break;
        uint32_t c1 = c0 + CHUNK < wk->ch ? c0 + CHUNK : wk->ch;
        uint32_t last = c1 * (uint32_t)wk->sy;
        need_rows(wk->img, last < wk->img->height ? last : wk->img->height);
        convert_chunk(wk, &t, c0, c1);
    }
    free(mem);
    return NULL;
}

/* Convert `img` into the three planes stored consecutively in `buf`. */
static int convert(struct frame *img, const struct options *o, int threads, uint32_t frame,
                   uint8_t *buf) {
    struct work wk;
    int sx = o->chroma == C444 ? 1 : 2, sy = o->chroma == C420 ? 2 : 1;
    wk.img = img;
    wk.sx = sx;
    wk.sy = sy;
    wk.cw = (img->width + sx - 1) / sx;
    wk.ch = (img->height + sy - 1) / sy;
    wk.y = buf;
    wk.cb = buf + (size_t)img->width * img->height;
    wk.cr = wk.cb + (size_t)wk.cw * wk.ch;
    wk.frame = frame;
    wk.dither = o->dither;
    wk.k = make_coeffs(sx * sy);
    atomic_store(&wk.next, 0);
    pthread_mutex_init(&img->lock, NULL);
    int n = threads;
    uint32_t chunks = (wk.ch + CHUNK - 1) / CHUNK;
    if ((uint32_t)n > chunks) n = (int)chunks;
    if (n > 64) n = 64;
    pthread_t tids[64];
    int started = 0;
    for (int i = 1; i < n; i++)
        if (!pthread_create(&tids[started], NULL, worker, &wk)) started++;
    worker(&wk);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    pthread_mutex_destroy(&img->lock);
    return atomic_load(&wk.next) >= wk.ch ? 0 : -1; /* every chunk was taken */
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

/* The frame number file name `name` has under `pattern` (whose base is `base`), or -1
 * if the pattern does not give that name for any number. */
static long frame_number(const char *pattern, const char *base, const char *name) {
    const char *pct = strchr(base, '%');
    size_t prefix = (size_t)(pct - base);
    const char *suffix = strchr(pct, 'd') + 1;
    size_t slen = strlen(suffix), len = strlen(name);
    char path[PATH_MAX];
    if (len <= prefix + slen || strncmp(name, base, prefix) || strcmp(name + len - slen, suffix))
        return -1;
    char *end;
    errno = 0;
    long v = strtol(name + prefix, &end, 10);
    if (errno || end != name + len - slen || v < 0 || v > INT_MAX) return -1;
    if (format_frame(path, sizeof path, pattern, v)) return -1;
    const char *formatted = strrchr(path, '/');
    if (strcmp(formatted ? formatted + 1 : path, name)) return -1; /* padding differs */
    return v;
}

/* The lowest frame number whose file exists for `pattern`, or -1. */
static long lowest_frame(const char *pattern) {
    char dir[PATH_MAX];
    const char *base;
    if (split_pattern(pattern, dir, sizeof dir, &base)) fail(pattern, "input pattern must have one %%d conversion");
    DIR *d = opendir(dir);
    if (!d) return -1;
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long v = frame_number(pattern, base, e->d_name);
        if (v >= 0 && (best < 0 || v < best)) best = v;
    }
    closedir(d);
    return best;
}

static int same_file(const struct stat *a, const char *path) {
    struct stat b;
    return !stat(path, &b) && a->st_dev == b.st_dev && a->st_ino == b.st_ino;
}

/* Refuse an output that is one of the inputs: the input file itself (by any name), a file
 * the pattern matches, or an existing frame of the run (a hard link). */
static void check_output_is_not_input(const char *output, const char *input, int pattern,
                                      long first) {
    struct stat out;
    int exists = !stat(output, &out);
    if (!pattern) {
        if ((exists && same_file(&out, input)) || !strcmp(output, input))
            fail(output, "-o names the input file; write the Y4M to another file");
        return;
    }
    char dir[PATH_MAX], odir[PATH_MAX], path[PATH_MAX];
    const char *base, *obase;
    if (split_pattern(input, dir, sizeof dir, &base)) return; /* lowest_frame said why */
    const char *slash = strrchr(output, '/');
    obase = slash ? slash + 1 : output;
    if (!slash) snprintf(odir, sizeof odir, ".");
    else if (slash == output) snprintf(odir, sizeof odir, "/");
    else snprintf(odir, sizeof odir, "%.*s", (int)(slash - output), output);
    struct stat ds, ods;
    if (!stat(dir, &ds) && !stat(odir, &ods) && ds.st_dev == ods.st_dev &&
        ds.st_ino == ods.st_ino && frame_number(input, base, obase) >= 0)
        fail(output, "-o names a file the input pattern %s matches; write the Y4M elsewhere",
             input);
    for (long n = first; exists && n <= INT_MAX; n++) {
        if (format_frame(path, sizeof path, input, n) || access(path, F_OK)) break;
        if (same_file(&out, path))
            fail(output, "-o names input frame %s (the same file); write the Y4M elsewhere",
                 path);
    }
}

/* ------------------------------------------------------------------ output */

static const char *chroma_tag(enum chroma c) {
    return c == C420 ? "C420jpeg" : c == C422 ? "C422jpeg" : "C444";
}

/* How many frames an existing Y4M holds (0 if none or unreadable): only seeds the dither,
 * so that frames appended one process at a time (-i) do not all get the same noise. */
static long frames_in(const char *path, enum chroma c) {
    FILE *f = fopen(path, "rb");
    char line[512];
    long count = 0;
    if (!f) return 0;
    struct stat st;
    if (!fstat(fileno(f), &st) && fgets(line, sizeof line, f) && !strncmp(line, "YUV4MPEG2 ", 10)) {
        size_t header = strlen(line);
        unsigned long w = 0, h = 0;
        char *save = NULL;
        for (char *tok = strtok_r(line + 10, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
            if (tok[0] == 'W') w = strtoul(tok + 1, NULL, 10);
            else if (tok[0] == 'H') h = strtoul(tok + 1, NULL, 10);
        }
        int sx = c == C444 ? 1 : 2, sy = c == C420 ? 2 : 1;
        unsigned long long frame = 6 + (unsigned long long)w * h +
                                   2ull * ((w + sx - 1) / sx) * ((h + sy - 1) / sy);
        if (w && h && w <= MAX_SIDE && h <= MAX_SIDE && (unsigned long long)st.st_size > header)
            count = (long)(((unsigned long long)st.st_size - header) / frame);
    }
    fclose(f);
    return count;
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
    char *save = NULL;
    for (char *tok = strtok_r(line + 10, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
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

/* ------------------------------------------------------------------ frame pipeline */

#define PREFIX 256 /* room before the planes for the stream header and "FRAME\n" */

enum { SLOT_FREE, SLOT_BUSY, SLOT_DONE, SLOT_ERROR, SLOT_END };

struct slot {
    long index; /* frame k of the run (number first + k) */
    int state;
    char path[PATH_MAX];
    char why[300];
    uint32_t width, height;
    size_t planes;
    struct buffer out;
    struct ctx cx;
};

struct pipeline {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    const struct options *o;
    const char *input;
    int pattern, decoders, row_threads, ring;
    long first, claimed, written;
    long base; /* frames already in the output (-i): the dither's frame index starts there */
    long end; /* the first frame k that is missing or failed: later ones are not needed */
    struct slot *slots;
};

static void *decoder(void *arg) {
    struct pipeline *pl = arg;
    for (;;) {
        pthread_mutex_lock(&pl->lock);
        long k = pl->claimed++;
        while (k < pl->end && k - pl->written >= pl->ring) pthread_cond_wait(&pl->changed, &pl->lock);
        int stop = k >= pl->end; /* every frame before `end` is converted, whatever happens */
        struct slot *sl = &pl->slots[k % pl->ring];
        if (!stop) {
            sl->index = k;
            sl->state = SLOT_BUSY;
        }
        pthread_mutex_unlock(&pl->lock);
        if (stop) return NULL;

        int state = SLOT_DONE;
        long n = pl->first + k;
        if (!pl->pattern) {
            if (k > 0) state = SLOT_END;
            else snprintf(sl->path, sizeof sl->path, "%s", pl->input);
        } else if (format_frame(sl->path, sizeof sl->path, pl->input, n)) {
            snprintf(sl->path, sizeof sl->path, "%s", pl->input);
            snprintf(sl->why, sizeof sl->why, "frame path too long");
            state = SLOT_ERROR;
        } else if (k > 0 && access(sl->path, F_OK)) {
            state = SLOT_END;
        }
        struct frame img;
        if (state == SLOT_DONE && decode_png(&sl->cx, sl->path, &img, sl->why, sizeof sl->why))
            state = SLOT_ERROR;
        if (state == SLOT_DONE) {
            const struct options *o = pl->o;
            int sx = o->chroma == C444 ? 1 : 2, sy = o->chroma == C420 ? 2 : 1;
            size_t cw = (img.width + sx - 1) / sx, ch = (img.height + sy - 1) / sy;
            sl->width = img.width;
            sl->height = img.height;
            sl->planes = (size_t)img.width * img.height + 2 * cw * ch;
            if (reserve(&sl->out, PREFIX + sl->planes)) {
                snprintf(sl->why, sizeof sl->why, "out of memory");
                state = SLOT_ERROR;
            } else {
                memcpy(sl->out.p + PREFIX - 6, "FRAME\n", 6);
                uint32_t index = (uint32_t)(pl->base + k);
                if (convert(&img, o, pl->row_threads, index, sl->out.p + PREFIX)) {
                    snprintf(sl->why, sizeof sl->why, "out of memory");
                    state = SLOT_ERROR;
                }
            }
        }
        pthread_mutex_lock(&pl->lock);
        sl->state = state;
        if ((state == SLOT_END || state == SLOT_ERROR) && k < pl->end) pl->end = k;
        pthread_cond_broadcast(&pl->changed);
        pthread_mutex_unlock(&pl->lock);
    }
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
          "      --max-pixels N  refuse images of more than N pixels (default 33177600,\n"
          "                      8K UHD 7680x4320); each pixel takes 6 bytes decoded\n"
          "  -h, --help          this help\n"
          "  The output may not be an input: -o naming the input file, or a file the\n"
          "  input pattern matches, is refused.\n",
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

static int parse_int(const char *opt, const char *v, int min) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > INT_MAX) fail(opt, "'%s' is not an integer >= %d", v, min);
    return (int)n;
}

int main(int argc, char **argv) {
    struct options o = {NULL, 0, 0, 1, 1, C420, 24, 1, 0, 0, DEFAULT_MAX_PIXELS};
    static const struct option longs[] = {
        {"output", required_argument, NULL, 'o'}, {"chroma-444", no_argument, NULL, 1},
        {"chroma-422", no_argument, NULL, 2},     {"no-dither", no_argument, NULL, 3},
        {"threads", required_argument, NULL, 4},  {"help", no_argument, NULL, 'h'},
        {"max-pixels", required_argument, NULL, 5}, {NULL, 0, NULL, 0}};
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
        case 5: o.max_pixels = parse_count("--max-pixels", optarg); break;
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
    check_output_is_not_input(o.output, input, pattern, first);

    /* Frames are decoded and converted by `decoders` threads, each frame by one of them
     * (with --threads N and a pattern) or one decoder converting with N row threads (a
     * single file), and written here strictly in order. The output is opened once the first
     * frame has decoded, so a bad input leaves it as it was. */
    struct pipeline pl = {0};
    pthread_mutex_init(&pl.lock, NULL);
    pthread_cond_init(&pl.changed, NULL);
    pl.o = &o;
    pl.input = input;
    pl.pattern = pattern;
    pl.first = first;
    pl.base = o.incremental ? frames_in(o.output, o.chroma) : 0;
    pl.end = LONG_MAX;
    pl.decoders = pattern && o.threads > 1 ? (o.threads > 16 ? 16 : o.threads) : 1;
    pl.row_threads = pl.decoders > 1 ? 1 : o.threads;
    pl.ring = 2 * pl.decoders;
    pl.slots = calloc((size_t)pl.ring, sizeof *pl.slots);
    pthread_t tids[16];
    if (!pl.slots) fail(input, "out of memory");
    for (int i = 0; i < pl.ring; i++) pl.slots[i].cx.max_pixels = o.max_pixels;
    for (int i = 0; i < pl.decoders; i++)
        if (pthread_create(&tids[i], NULL, decoder, &pl)) fail(input, "cannot start a thread");

    int fd = -1;
    off_t size = 0;
    char why[300];
    uint32_t w0 = 0, h0 = 0;
    for (long k = 0;; k++) {
        struct slot *sl = &pl.slots[k % pl.ring];
        pthread_mutex_lock(&pl.lock);
        while (sl->index != k || sl->state < SLOT_DONE) pthread_cond_wait(&pl.changed, &pl.lock);
        pthread_mutex_unlock(&pl.lock);
        if (sl->state == SLOT_END) break;
        if (sl->state == SLOT_ERROR) fail(sl->path, "%s", sl->why);
        if (k == 0) {
            fd = open(o.output, O_RDWR | O_CREAT | (o.incremental ? 0 : O_TRUNC), 0644);
            if (fd < 0) fail(o.output, "cannot open for writing: %s", strerror(errno));
            size = lseek(fd, 0, SEEK_END);
            if (size < 0) fail(o.output, "cannot seek: %s", strerror(errno));
            w0 = sl->width;
            h0 = sl->height;
            if (size > 0) {
                FILE *f = fdopen(dup(fd), "r");
                if (!f) fail(o.output, "cannot read: %s", strerror(errno));
                rewind(f);
                int bad = header_matches(f, w0, h0, o.chroma, why, sizeof why);
                fclose(f);
                if (bad) fail(o.output, "%s", why);
            }
        } else if (sl->width != w0 || sl->height != h0) {
            fail(sl->path, "frame size %ux%u differs from the first frame's %ux%u", sl->width,
                 sl->height, w0, h0);
        }
        /* The slot holds "FRAME\n" + planes at PREFIX; the header goes right before. */
        uint8_t *start = sl->out.p + PREFIX - 6;
        size_t total = 6 + sl->planes;
        if (size == 0 && k == 0) {
            char header[160];
            int hl = snprintf(header, sizeof header, "YUV4MPEG2 W%u H%u F%d:%d Ip A%d:%d %s\n",
                              w0, h0, o.fps_n, o.fps_d, o.aspect_n, o.aspect_d,
                              chroma_tag(o.chroma));
            start -= hl;
            total += (size_t)hl;
            memcpy(start, header, (size_t)hl);
        }
        off_t at = lseek(fd, 0, SEEK_END);
        size_t done = 0;
        while (done < total) {
            ssize_t n = write(fd, start + done, total - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                int e = errno;
                if (ftruncate(fd, at)) { /* nothing more can be done */ }
                fail(o.output, "write failed: %s", strerror(n < 0 ? e : ENOSPC));
            }
            done += (size_t)n;
        }
        if (o.delete_input) {
            if (fdatasync(fd) && errno != EINVAL) fail(o.output, "sync failed: %s", strerror(errno));
            if (unlink(sl->path)) fail(sl->path, "cannot delete: %s", strerror(errno));
        }
        pthread_mutex_lock(&pl.lock);
        sl->state = SLOT_FREE;
        pl.written = k + 1;
        pthread_cond_broadcast(&pl.changed);
        pthread_mutex_unlock(&pl.lock);
    }
    pthread_mutex_lock(&pl.lock);
    pl.end = 0;
    pthread_cond_broadcast(&pl.changed);
    pthread_mutex_unlock(&pl.lock);
    for (int i = 0; i < pl.decoders; i++) pthread_join(tids[i], NULL);
    for (int i = 0; i < pl.ring; i++) {
        free(pl.slots[i].out.p);
        free(pl.slots[i].cx.file.p);
        free(pl.slots[i].cx.pixels.p);
        if (pl.slots[i].cx.inflater) libdeflate_free_decompressor(pl.slots[i].cx.inflater);
    }
    free(pl.slots);
    if (fd < 0) fail(input, "no frame converted");
    if (close(fd)) fail(o.output, "close failed: %s", strerror(errno));
    return 0;
}
