/*
 * pngdecode: the libpng decode-only floor for bench/png2y4m.py.
 *
 * Decodes every PNG named on the command line with libpng (rows in libpng's native layout,
 * no transforms except interlace handling) and prints "<frames> <checksum>". A converter
 * that reads PNGs through libpng cannot be faster than this; png2y4m is compared with it.
 */
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int decode(const char *path, uint64_t *sum) {
    FILE *volatile f = fopen(path, "rb");
    if (!f) return -1;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    unsigned char *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_read_info(png, info);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    png_uint_32 h = png_get_image_height(png, info);
    size_t stride = png_get_rowbytes(png, info);
    pixels = malloc(stride * h);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + stride * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    for (size_t i = 0; i < stride * h; i += 4096) *sum += pixels[i];
    png_destroy_read_struct(&png, &info, NULL);
    free(pixels);
    free(rows);
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    uint64_t sum = 0;
    for (int i = 1; i < argc; i++)
        if (decode(argv[i], &sum)) {
            fprintf(stderr, "pngdecode: %s: cannot decode\n", argv[i]);
            return 1;
        }
    printf("%d %llu\n", argc - 1, (unsigned long long)sum);
    return 0;
}
