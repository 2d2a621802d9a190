package clip

/*
#include <stdlib.h>
#include <clip.h>
*/
import "C"

// SetLogLevel sets libclip's log level (to stderr): trace, debug, info, warn (or
// warning), error, or off (or disabled, none). Unlike the Go clip, it does not
// change zerolog's global level: the caller's own logging is left alone.
func SetLogLevel(level string) error {
	var cs cstrings
	defer cs.free()
	return call(func() C.int { return C.clip_set_log_level(cs.bytes(level)) })
}
