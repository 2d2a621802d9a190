#include "callbacks.h"
#include "_cgo_export.h"

static int progress_trampoline(const clip_progress *p, void *payload) {
	return clipgoProgress((clip_progress *)p, (uintptr_t)payload);
}

static int upload_progress_trampoline(unsigned int percent, void *payload) {
	return clipgoUploadProgress(percent, (uintptr_t)payload);
}

static int credential_trampoline(clip_credential *out, const char *registry,
                                 const char *scope, void *payload) {
	return clipgoCredential(out, (char *)registry, (char *)scope, (uintptr_t)payload);
}

static void read_observer_trampoline(const clip_read_event *event, void *payload) {
	clipgoReadObserved((clip_read_event *)event, (uintptr_t)payload);
}

static int cache_exists_trampoline(const char *key, uint64_t size, void *payload) {
	return clipgoCacheExists((char *)key, size, (uintptr_t)payload);
}

static int cache_read_trampoline(const char *key, uint64_t offset, uint8_t *buf, uint64_t len,
                                 void *payload) {
	return clipgoCacheRead((char *)key, offset, buf, len, (uintptr_t)payload);
}

static int cache_store_trampoline(const char *key, const char *path, void *payload) {
	return clipgoCacheStoreFile((char *)key, (char *)path, (uintptr_t)payload);
}

static int prepare_progress_trampoline(const clip_prepare_progress *p, void *payload) {
	return clipgoPrepareProgress((clip_prepare_progress *)p, (uintptr_t)payload);
}

static int layer_index_get_trampoline(clip_buffer *out, const char *key, void *payload) {
	return clipgoLayerIndexGet(out, (char *)key, (uintptr_t)payload);
}

static int layer_index_put_trampoline(const char *key, const uint8_t *data, size_t len,
                                      void *payload) {
	return clipgoLayerIndexPut((char *)key, (uint8_t *)data, len, (uintptr_t)payload);
}

void clipgo_set_progress(clip_create_options *opts, uintptr_t handle) {
	opts->progress_cb = progress_trampoline;
	opts->progress_payload = (void *)handle;
}

void clipgo_set_credentials(clip_registry_options *opts, uintptr_t handle) {
	opts->credential_cb = credential_trampoline;
	opts->credential_payload = (void *)handle;
}

void clipgo_set_read_observer(clip_mount_options *opts, uintptr_t handle) {
	opts->read_observer = read_observer_trampoline;
	opts->read_observer_payload = (void *)handle;
}

void clipgo_set_upload_progress(clip_upload_options *opts, uintptr_t handle) {
	opts->progress_cb = upload_progress_trampoline;
	opts->progress_payload = (void *)handle;
}

void clipgo_set_content_cache(clip_content_cache *cache, uintptr_t handle) {
	cache->exists = cache_exists_trampoline;
	cache->read = cache_read_trampoline;
	cache->store_file = cache_store_trampoline;
	cache->payload = (void *)handle;
}

void clipgo_set_prepare_progress(clip_prepare_options *opts, uintptr_t handle) {
	opts->progress = prepare_progress_trampoline;
	opts->progress_payload = (void *)handle;
}

void clipgo_set_layer_index_cache(clip_layer_index_cache_callbacks *cbs, uintptr_t handle) {
	cbs->get = layer_index_get_trampoline;
	cbs->put = layer_index_put_trampoline;
	cbs->payload = (void *)handle;
}
