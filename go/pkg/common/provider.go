package common

import (
	"context"
	"errors"
	"strings"

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

// StaticProvider answers from a fixed map of registry host (or pattern with `*`
// wildcards, such as "*.dkr.ecr.*.amazonaws.com") to credentials.
type StaticProvider struct {
	credentials map[string]*authn.AuthConfig
	name        string
}

// NewStaticProvider returns a StaticProvider named "static".
func NewStaticProvider(credentials map[string]*authn.AuthConfig) *StaticProvider {
	return NewStaticProviderWithName("static", credentials)
}

// NewStaticProviderWithName returns a StaticProvider named name.
func NewStaticProviderWithName(name string, credentials map[string]*authn.AuthConfig) *StaticProvider {
	return &StaticProvider{credentials: credentials, name: name}
}

// GetCredentials returns the credentials of registry (an exact key first, then the
// first matching pattern), else ErrNoCredentials.
func (p *StaticProvider) GetCredentials(_ context.Context, registry, _ string) (*authn.AuthConfig, error) {
	if creds, ok := p.credentials[registry]; ok {
		return creds, nil
	}
	for pattern, creds := range p.credentials {
		if matchRegistryPattern(pattern, registry) {
			return creds, nil
		}
	}
	return nil, ErrNoCredentials
}

// Name returns the provider's name.
func (p *StaticProvider) Name() string { return p.name }

// matchRegistryPattern reports whether registry matches pattern, in which `*` stands
// for any run of characters ("*" alone matches everything; no `*` means equality).
func matchRegistryPattern(pattern, registry string) bool {
	if pattern == "*" {
		return true
	}
	if !strings.Contains(pattern, "*") {
		return pattern == registry
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(registry, parts[0]) || !strings.HasSuffix(registry, parts[len(parts)-1]) {
		return false
	}
	pos := 0
	for _, part := range parts {
		if part == "" {
			continue
		}
		idx := strings.Index(registry[pos:], part)
		if idx == -1 {
			return false
		}
		pos += idx + len(part)
	}
	return true
}

// CredentialType is the kind of credentials a map holds (DetectCredentialType).
type CredentialType string

// The credential types.
const (
	CredTypePublic  CredentialType = "public"
	CredTypeBasic   CredentialType = "basic"
	CredTypeAWS     CredentialType = "aws"
	CredTypeGCP     CredentialType = "gcp"
	CredTypeAzure   CredentialType = "azure"
	CredTypeToken   CredentialType = "token"
	CredTypeUnknown CredentialType = "unknown"
)

// DetectCredentialType tells the kind of credentials creds holds for registry, by its
// keys first and then by the registry host, as the Go clip does:
//   - none → public;
//   - AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY → aws;
//   - GOOGLE_APPLICATION_CREDENTIALS, GCP_PROJECT_ID or GCP_ACCESS_TOKEN → gcp;
//   - AZURE_CLIENT_ID and AZURE_CLIENT_SECRET → azure;
//   - NGC_API_KEY, GITHUB_TOKEN or DOCKERHUB_TOKEN → token;
//   - a key containing USERNAME and one containing PASSWORD (any case) → basic;
//   - else a host containing "ecr" or "amazonaws.com" → aws (so "*.azurecr.io" too,
//     as in the Go clip), "gcr.io" or "pkg.dev" → gcp, "azurecr.io" → azure (never
//     reached); otherwise unknown.
func DetectCredentialType(registry string, creds map[string]string) CredentialType {
	if len(creds) == 0 {
		return CredTypePublic
	}
	registry = strings.ToLower(registry)
	has := func(k string) bool { _, ok := creds[k]; return ok }
	switch {
	case has("AWS_ACCESS_KEY_ID") && has("AWS_SECRET_ACCESS_KEY"):
		return CredTypeAWS
	case has("GOOGLE_APPLICATION_CREDENTIALS") || has("GCP_PROJECT_ID") || has("GCP_ACCESS_TOKEN"):
		return CredTypeGCP
	case has("AZURE_CLIENT_ID") && has("AZURE_CLIENT_SECRET"):
		return CredTypeAzure
	case has("NGC_API_KEY") || has("GITHUB_TOKEN") || has("DOCKERHUB_TOKEN"):
		return CredTypeToken
	}
	hasUsername, hasPassword := false, false
	for key := range creds {
		upper := strings.ToUpper(key)
		hasUsername = hasUsername || strings.Contains(upper, "USERNAME")
		hasPassword = hasPassword || strings.Contains(upper, "PASSWORD")
	}
	switch {
	case hasUsername && hasPassword:
		return CredTypeBasic
	case strings.Contains(registry, "ecr") || strings.Contains(registry, "amazonaws.com"):
		return CredTypeAWS
	case strings.Contains(registry, "gcr.io") || strings.Contains(registry, "pkg.dev"):
		return CredTypeGCP
	case strings.Contains(registry, "azurecr.io"):
		return CredTypeAzure
	}
	return CredTypeUnknown
}

// CredentialsToProvider turns a credential map (beta9's registry secrets) into a
// provider for registry, detecting the kind with DetectCredentialType. It is the
// Go clip's function, key for key:
//   - an empty or nil map: NewPublicOnlyProvider();
//   - basic: REGISTRY_USERNAME, DOCKER_USERNAME, USERNAME (first non-empty; else any
//     key containing USERNAME) and likewise PASSWORD → a StaticProvider named
//     "creds-<registry>" for registry alone; public-only if either is missing;
//   - aws: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (and optional
//     AWS_SESSION_TOKEN) → an ECRProvider for registry that exchanges them for an ECR
//     token (GetAuthorizationToken, cached 11 h); public-only if one is missing;
//   - gcp: GCP_ACCESS_TOKEN → oauth2accesstoken/<token>; otherwise a CallbackProvider
//     "creds-<registry>" answering from the keychain for registry;
//   - azure: a CallbackProvider "creds-<registry>" answering from the keychain;
//   - token: NGC_API_KEY on nvcr.io ($oauthtoken), GITHUB_TOKEN on ghcr.io (user
//     GITHUB_USERNAME, else USERNAME, else the token), DOCKERHUB_USERNAME with
//     DOCKERHUB_PASSWORD or DOCKERHUB_TOKEN on docker.io, else the first of NGC_API_KEY
//     ($oauthtoken), GITHUB_TOKEN (oauth2accesstoken), DOCKERHUB_TOKEN (USERNAME, else
//     oauth2accesstoken) → a StaticProvider "creds-<registry>";
//   - anything else: public-only.
//
// One difference: for gcp and azure maps the Go clip copied the map into the process
// environment around each keychain lookup; this one does not (libclip reads the
// environment on its own threads, where a concurrent setenv is unsafe), so only the
// environment the process already has reaches the keychain.
func CredentialsToProvider(ctx context.Context, registry string, creds map[string]string) RegistryCredentialProvider {
	if len(creds) == 0 {
		return NewPublicOnlyProvider()
	}
	return CreateProviderFromCredentials(ctx, registry, DetectCredentialType(registry, creds), creds)
}

// CreateProviderFromCredentials is CredentialsToProvider with the credential type
// given.
func CreateProviderFromCredentials(_ context.Context, registry string, credType CredentialType, creds map[string]string) RegistryCredentialProvider {
	if len(creds) == 0 {
		return NewPublicOnlyProvider()
	}
	providerName := "creds-" + registry
	static := func(username, password string) RegistryCredentialProvider {
		return NewStaticProviderWithName(providerName, map[string]*authn.AuthConfig{
			registry: {Username: username, Password: password},
		})
	}
	registryLower := strings.ToLower(registry)

	switch credType {
	case CredTypeBasic:
		username := firstNonEmpty(creds, "REGISTRY_USERNAME", "DOCKER_USERNAME", "USERNAME")
		password := firstNonEmpty(creds, "REGISTRY_PASSWORD", "DOCKER_PASSWORD", "PASSWORD")
		if username == "" || password == "" {
			for key, value := range creds {
				upper := strings.ToUpper(key)
				if username == "" && strings.Contains(upper, "USERNAME") {
					username = value
				}
				if password == "" && strings.Contains(upper, "PASSWORD") {
					password = value
				}
			}
		}
		if username != "" && password != "" {
			return static(username, password)
		}
		return NewPublicOnlyProvider()

	case CredTypeAWS:
		accessKey, secretKey, region := creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"], creds["AWS_REGION"]
		if accessKey != "" && secretKey != "" && region != "" {
			return NewECRProvider(ECRProviderConfig{
				AWSAccessKey:    accessKey,
				AWSSecretKey:    secretKey,
				AWSSessionToken: creds["AWS_SESSION_TOKEN"],
				AWSRegion:       region,
				RegistryPattern: registry,
			})
		}
		return NewPublicOnlyProvider()

	case CredTypeGCP:
		if token := creds["GCP_ACCESS_TOKEN"]; token != "" {
			return static("oauth2accesstoken", token)
		}
		return keychainCallback(providerName, registry)

	case CredTypeAzure:
		return keychainCallback(providerName, registry)

	case CredTypeToken:
		if strings.Contains(registryLower, "nvcr.io") {
			if apiKey := creds["NGC_API_KEY"]; apiKey != "" {
				return static("$oauthtoken", apiKey)
			}
		}
		if strings.Contains(registryLower, "ghcr.io") {
			if token := creds["GITHUB_TOKEN"]; token != "" {
				username := firstNonEmpty(creds, "GITHUB_USERNAME", "USERNAME")
				if username == "" {
					username = token
				}
				return static(username, token)
			}
		}
		if strings.Contains(registryLower, "docker.io") || registry == "index.docker.io" || registry == "registry-1.docker.io" {
			username, password, token := creds["DOCKERHUB_USERNAME"], creds["DOCKERHUB_PASSWORD"], creds["DOCKERHUB_TOKEN"]
			if username != "" && password != "" {
				return static(username, password)
			}
			if token != "" {
				if username == "" {
					username = creds["USERNAME"]
				}
				return static(username, token)
			}
		}
		for _, tc := range []struct{ key, username string }{
			{"NGC_API_KEY", "$oauthtoken"},
			{"GITHUB_TOKEN", "oauth2accesstoken"},
			{"DOCKERHUB_TOKEN", ""},
			{"GCP_ACCESS_TOKEN", "oauth2accesstoken"},
		} {
			if token := creds[tc.key]; token != "" {
				username := tc.username
				if username == "" {
					username = creds["USERNAME"]
					if username == "" {
						username = "oauth2accesstoken"
					}
				}
				return static(username, token)
			}
		}
		return NewPublicOnlyProvider()
	}
	return NewPublicOnlyProvider()
}

func firstNonEmpty(creds map[string]string, keys ...string) string {
	for _, key := range keys {
		if v := creds[key]; v != "" {
			return v
		}
	}
	return ""
}

// keychainCallback answers for registry alone, from the keychain.
func keychainCallback(name, registry string) *CallbackProvider {
	return NewCallbackProviderWithName(name, func(ctx context.Context, reg, scope string) (*authn.AuthConfig, error) {
		if reg != registry {
			return nil, ErrNoCredentials
		}
		return NewKeychainProvider().GetCredentials(ctx, reg, scope)
	})
}
