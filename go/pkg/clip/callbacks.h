/* C side of the Go package's callbacks: the trampolines libclip calls, which pass
 * the payload on to the exported Go functions as the cgo.Handle it is. Only C code
 * turns a handle into a void * and back (a Go unsafe.Pointer must not hold one). */
#ifndef CLIPGO_CALLBACKS_H
#define CLIPGO_CALLBACKS_H

#include <stdint.h>
#include <clip.h>

void clipgo_set_progress(clip_create_options *opts, uintptr_t handle);
void clipgo_set_credentials(clip_registry_options *opts, uintptr_t handle);
void clipgo_set_read_observer(clip_mount_options *opts, uintptr_t handle);
void clipgo_set_upload_progress(clip_upload_options *opts, uintptr_t handle);
void clipgo_set_content_cache(clip_content_cache *cache, uintptr_t handle);
void clipgo_set_prepare_progress(clip_prepare_options *opts, uintptr_t handle);
void clipgo_set_layer_index_cache(clip_layer_index_cache_callbacks *cbs, uintptr_t handle);

#endif
