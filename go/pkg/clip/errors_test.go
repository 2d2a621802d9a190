package clip

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beam-cloud/clip/go/internal/testutil"
	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/google/go-containerregistry/pkg/authn"
)

// wantErr checks err matches sentinel and its message names every one of words.
func wantErr(t *testing.T, what string, err, sentinel error, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %v", what, sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: got %v (code %v), want %v", what, err, codeOf(err), sentinel)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%s: %q does not name %q", what, err, w)
		}
	}
}

func codeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Flow 5: bad inputs give Go errors that say why.
func TestBadInputs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "v1", testutil.SampleImage(1<<10))
	out := filepath.Join(dir, "out.clip")

	t.Run("missing layout", func(t *testing.T) {
		missing := filepath.Join(dir, "no-such-layout")
		err := CreateIndexOnlyArchiveFromOCILayout(ctx, missing, "v1", out)
		wantErr(t, "missing layout", err, ErrNotFound, missing)
	})
	t.Run("unknown tag", func(t *testing.T) {
		err := CreateIndexOnlyArchiveFromOCILayout(ctx, layout, "nope", out)
		wantErr(t, "unknown tag", err, ErrNotFound, `"nope"`)
	})
	t.Run("empty arguments", func(t *testing.T) {
		wantErr(t, "no output", CreateFromOCIImage(ctx, CreateFromOCIImageOptions{ImageRef: "x/y:z"}), ErrInvalid, "OutputPath")
		wantErr(t, "no image", CreateFromOCIImage(ctx, CreateFromOCIImageOptions{OutputPath: out}), ErrInvalid, "ImageRef")
		_, _, _, err := MountArchive(MountOptions{ArchivePath: out})
		wantErr(t, "no mount point", err, ErrInvalid, "MountPoint")
		wantErr(t, "log level", SetLogLevel("chatty"), ErrInvalid, "chatty")
	})
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a failed call left %s", out)
	}

	t.Run("corrupt archive", func(t *testing.T) {
		garbage := filepath.Join(dir, "garbage.clip")
		if err := os.WriteFile(garbage, []byte("this is not a clip archive, just text of some length"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := NewClipArchiver().ExtractMetadata(garbage)
		wantErr(t, "garbage", err, ErrFormat, garbage)
		if !errors.Is(err, common.ErrFileHeaderMismatch) {
			t.Fatalf("%v does not match common.ErrFileHeaderMismatch", err)
		}

		good := filepath.Join(dir, "good.clip")
		if err := CreateIndexOnlyArchiveFromOCILayout(ctx, layout, "v1", good); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(good)
		if err != nil {
			t.Fatal(err)
		}
		truncated := filepath.Join(dir, "truncated.clip")
		if err := os.WriteFile(truncated, b[:len(b)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = NewClipArchiver().ExtractMetadata(truncated)
		wantErr(t, "truncated", err, ErrFormat, truncated)
		flipped := append([]byte(nil), b...)
		flipped[len(flipped)-10] ^= 0xff
		corrupt := filepath.Join(dir, "flipped.clip")
		if err := os.WriteFile(corrupt, flipped, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = NewClipArchiver().ExtractMetadata(corrupt)
		wantErr(t, "flipped byte", err, ErrFormat, corrupt)

		// The header of an archive of the Go clip (its start bytes share our
		// magic's first 8) with an empty index: read as a Go-clip archive, and
		// refused (goclip_test.go has real ones); another Go-clip version is
		// ErrVersion.
		goClip := filepath.Join(dir, "go-clip-v1.clip")
		header := append([]byte{0x89, 0x43, 0x4C, 0x49, 0x50, 0x0D, 0x0A, 0x1A, 0x0A, 0x01}, make([]byte, 256)...)
		if err := os.WriteFile(goClip, header, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = NewClipArchiver().ExtractMetadata(goClip)
		wantErr(t, "Go clip archive with an empty index", err, ErrFormat, goClip, "index")
		if !errors.Is(err, common.ErrFileHeaderMismatch) {
			t.Fatalf("%v does not match common.ErrFileHeaderMismatch", err)
		}
		header[9] = 2
		if err := os.WriteFile(goClip, header, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = NewClipArchiver().ExtractMetadata(goClip)
		wantErr(t, "Go clip archive of version 2", err, ErrVersion, goClip)
		if !errors.Is(err, common.ErrFileHeaderMismatch) {
			t.Fatalf("%v does not match common.ErrFileHeaderMismatch", err)
		}

		testutil.NeedFUSE(t)
		_, _, _, err = MountArchive(MountOptions{ArchivePath: corrupt, MountPoint: filepath.Join(dir, "mnt")})
		wantErr(t, "mounting a corrupt archive", err, ErrFormat)
	})
	t.Run("missing archive", func(t *testing.T) {
		_, err := NewClipArchiver().ExtractMetadata(filepath.Join(dir, "none.clip"))
		wantErr(t, "missing archive", err, ErrNotFound, "none.clip")
	})
}

// Credentials against an htpasswd-protected registry: what each provider answer
// does.
func TestCredentials(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	testutil.WriteLayout(t, layout, "v1", testutil.SampleImage(1<<10))
	reg := testutil.StartRegistry(t, true)
	reg.Push(t, layout, "v1", "private/app:v1")
	// The default chain must find nothing on this machine.
	t.Setenv("DOCKER_CONFIG", filepath.Join(dir, "no-docker-config"))
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "no-auth-file"))

	index := func(provider interface{}) error {
		out := filepath.Join(t.TempDir(), "a.clip")
		return CreateFromOCIImage(ctx, CreateFromOCIImageOptions{ImageRef: reg.Ref("private/app:v1"), OutputPath: out, CredProvider: provider})
	}
	basic := base64.StdEncoding.EncodeToString([]byte(reg.User + ":" + reg.Pass))
	for _, c := range []struct {
		name     string
		provider interface{}
		ok       bool
	}{
		{"username/password", &recordingProvider{cfg: &authn.AuthConfig{Username: reg.User, Password: reg.Pass}}, true},
		{"auth field", &recordingProvider{cfg: &authn.AuthConfig{Auth: basic}}, true},
		{"callback provider", common.NewCallbackProviderWithName("cb", func(context.Context, string, string) (*authn.AuthConfig, error) {
			return &authn.AuthConfig{Username: reg.User, Password: reg.Pass}, nil
		}), true},
		{"no provider", nil, false},
		{"not a provider", "just a string", false},
		{"wrong password", &recordingProvider{cfg: &authn.AuthConfig{Username: reg.User, Password: "wrong"}}, false},
		{"anonymous", &recordingProvider{cfg: &authn.AuthConfig{}}, false},
		{"no credentials", &recordingProvider{err: common.ErrNoCredentials}, false},
		{"provider error", &recordingProvider{err: errors.New("vault down")}, false},
		{"public only", common.NewPublicOnlyProvider(), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := index(c.provider)
			if c.ok && err != nil {
				t.Fatalf("got %v, want success", err)
			}
			if !c.ok {
				wantErr(t, c.name, err, ErrAuth, reg.Addr)
			}
		})
	}

	// A panic in a provider runs on a libclip thread: it is recovered there, stops
	// the call, and is re-raised on the caller's goroutine.
	t.Run("panicking provider", func(t *testing.T) {
		defer func() {
			if r := recover(); r != "provider bug" {
				t.Fatalf("recovered %v, want the provider's panic", r)
			}
		}()
		_ = index(common.NewCallbackProviderWithName("buggy", func(context.Context, string, string) (*authn.AuthConfig, error) {
			panic("provider bug")
		}))
		t.Fatal("CreateFromOCIImage returned instead of re-raising the panic")
	})

	// ErrNoCredentials falls back to the default chain: the CLIP_REGISTRY_*
	// variables, then a docker config.
	t.Run("fallback to environment", func(t *testing.T) {
		host := strings.NewReplacer(".", "_", ":", "_", "-", "_").Replace(strings.ToUpper(reg.Addr))
		t.Setenv("CLIP_REGISTRY_USER_"+host, reg.User)
		t.Setenv("CLIP_REGISTRY_PASS_"+host, reg.Pass)
		if err := index(&recordingProvider{err: common.ErrNoCredentials}); err != nil {
			t.Fatalf("ErrNoCredentials with CLIP_REGISTRY_USER_%s set: %v", host, err)
		}
		if err := index(nil); err != nil {
			t.Fatalf("no provider with CLIP_REGISTRY_USER_%s set: %v", host, err)
		}
	})
	t.Run("fallback to docker config", func(t *testing.T) {
		cfgDir := filepath.Join(dir, "docker")
		if err := os.MkdirAll(cfgDir, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := `{"auths":{"` + reg.Addr + `":{"auth":"` + basic + `"}}}`
		if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", cfgDir)
		if err := index(&recordingProvider{err: common.ErrNoCredentials}); err != nil {
			t.Fatalf("ErrNoCredentials with a docker config: %v", err)
		}
		// An empty AuthConfig means anonymous: the docker config is not used.
		wantErr(t, "anonymous", index(&recordingProvider{cfg: &authn.AuthConfig{}}), ErrAuth)
	})
}
