/* The installed header compiles on its own, as C99 and as C++, with every warning
 * an error (tests/c/run.sh builds this twice), and its version macros agree with
 * the library it is linked against. */
#include <clip.h>
#include <string.h>

int main(void) {
    clip_create_options c;
    clip_mount_options m;
    clip_registry_options r;
    clip_stats s;
    if (clip_create_options_init(&c, CLIP_CREATE_OPTIONS_VERSION) != CLIP_OK) return 1;
    if (clip_mount_options_init(&m, CLIP_MOUNT_OPTIONS_VERSION) != CLIP_OK) return 1;
    if (clip_registry_options_init(&r, CLIP_REGISTRY_OPTIONS_VERSION) != CLIP_OK) return 1;
    s.version = CLIP_STATS_VERSION;
    (void)s;
    return strcmp(clip_version(), CLIP_VERSION_STRING) != 0;
}
