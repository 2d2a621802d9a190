package common

import (
	"context"
	"errors"

	"github.com/google/go-containerregistry/pkg/authn"
)

// ErrNoCredentials is what a provider returns when it has no credentials for a
// registry. clip then falls back to its default chain (CLIP_REGISTRY_USER_<HOST> /
// CLIP_REGISTRY_PASS_<HOST>, docker config, anonymous).
var ErrNoCredentials = errors.New("no credentials available")

// RegistryCredentialProvider supplies registry credentials at run time; they are never
// stored in an archive.
//
// GetCredentials receives the registry host[:port] and the repository path as scope.
// Its result decides how clip authenticates:
//   - (nil, ErrNoCredentials) or (nil, any error): the default chain;
//   - &authn.AuthConfig{} (all fields empty): anonymous, the default chain is skipped;
//   - Username/Password, or Auth (base64 "user:pass"): basic credentials;
//   - RegistryToken or IdentityToken: a token.
type RegistryCredentialProvider interface {
	GetCredentials(ctx context.Context, registry string, scope string) (*authn.AuthConfig, error)
	Name() string
}

// PublicOnlyProvider never has credentials: clip uses its default chain.
type PublicOnlyProvider struct{}

// NewPublicOnlyProvider returns a PublicOnlyProvider.
func NewPublicOnlyProvider() *PublicOnlyProvider { return &PublicOnlyProvider{} }

// GetCredentials returns ErrNoCredentials.
func (p *PublicOnlyProvider) GetCredentials(context.Context, string, string) (*authn.AuthConfig, error) {
	return nil, ErrNoCredentials
}

// Name returns "public-only".
func (p *PublicOnlyProvider) Name() string { return "public-only" }

// CallbackProvider asks a function.
type CallbackProvider struct {
	name     string
	callback func(ctx context.Context, registry string, scope string) (*authn.AuthConfig, error)
}

// NewCallbackProvider returns a provider named "callback" that asks callback.
func NewCallbackProvider(callback func(ctx context.Context, registry string, scope string) (*authn.AuthConfig, error)) *CallbackProvider {
	return NewCallbackProviderWithName("callback", callback)
}

// NewCallbackProviderWithName returns a provider named name that asks callback.
func NewCallbackProviderWithName(name string, callback func(ctx context.Context, registry string, scope string) (*authn.AuthConfig, error)) *CallbackProvider {
	return &CallbackProvider{name: name, callback: callback}
}

// GetCredentials calls the callback.
func (p *CallbackProvider) GetCredentials(ctx context.Context, registry, scope string) (*authn.AuthConfig, error) {
	return p.callback(ctx, registry, scope)
}

// Name returns the provider's name.
func (p *CallbackProvider) Name() string { return p.name }

// KeychainProvider reads go-containerregistry's authn.DefaultKeychain (docker config
// and credential helpers). beta9 calls it directly.
type KeychainProvider struct {
	keychain authn.Keychain
}

// NewKeychainProvider returns a provider over authn.DefaultKeychain.
func NewKeychainProvider() *KeychainProvider {
	return &KeychainProvider{keychain: authn.DefaultKeychain}
}

// GetCredentials resolves registry in the keychain; ErrNoCredentials when it only
// has anonymous access to offer.
func (p *KeychainProvider) GetCredentials(_ context.Context, registry, _ string) (*authn.AuthConfig, error) {
	auth, err := p.keychain.Resolve(registryResource(registry))
	if err != nil {
		return nil, err
	}
	if auth == authn.Anonymous {
		return nil, ErrNoCredentials
	}
	cfg, err := auth.Authorization()
	if err != nil {
		return nil, err
	}
	if *cfg == (authn.AuthConfig{}) {
		return nil, ErrNoCredentials
	}
	return cfg, nil
}

// Name returns "keychain".
func (p *KeychainProvider) Name() string { return "keychain" }

type registryResource string

func (r registryResource) String() string      { return string(r) }
func (r registryResource) RegistryStr() string { return string(r) }
