package common

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// ECRProvider exchanges AWS keys for an Amazon ECR registry token (the ECR
// GetAuthorizationToken API) and caches it. It answers only for registries matching
// its pattern.
type ECRProvider struct {
	accessKey, secretKey, sessionToken, region string
	pattern                                    string
	ttl                                        time.Duration
	endpoint                                   string // test hook; "" = AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL, or AWS's
	client                                     *http.Client

	mu        sync.Mutex
	cached    *authn.AuthConfig
	expiresAt time.Time
}

// ECRProviderConfig configures NewECRProvider.
type ECRProviderConfig struct {
	AWSAccessKey    string
	AWSSecretKey    string
	AWSSessionToken string        // optional
	AWSRegion       string        // the region of the ECR API asked
	RegistryPattern string        // "" = "*.dkr.ecr.*.amazonaws.com"
	CacheTTL        time.Duration // 0 = 11 h (ECR tokens are valid for 12 h)
}

// NewECRProvider returns an ECRProvider.
func NewECRProvider(config ECRProviderConfig) *ECRProvider {
	pattern := config.RegistryPattern
	if pattern == "" {
		pattern = "*.dkr.ecr.*.amazonaws.com"
	}
	ttl := config.CacheTTL
	if ttl == 0 {
		ttl = 11 * time.Hour
	}
	return &ECRProvider{
		accessKey:    config.AWSAccessKey,
		secretKey:    config.AWSSecretKey,
		sessionToken: config.AWSSessionToken,
		region:       config.AWSRegion,
		pattern:      pattern,
		ttl:          ttl,
		client:       &http.Client{Timeout: 30 * time.Second},
	}
}

// Name returns "ecr[<region>]".
func (p *ECRProvider) Name() string { return fmt.Sprintf("ecr[%s]", p.region) }

// GetCredentials returns the cached token, or asks ECR for a new one (user "AWS").
// A registry outside the pattern gets ErrNoCredentials; a failed exchange an error.
func (p *ECRProvider) GetCredentials(ctx context.Context, registry, _ string) (*authn.AuthConfig, error) {
	if !matchRegistryPattern(p.pattern, registry) {
		return nil, ErrNoCredentials
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cached != nil && time.Now().Before(p.expiresAt) {
		return p.cached, nil
	}
	cfg, err := p.fetch(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to get ECR token: %w", err)
	}
	p.cached, p.expiresAt = cfg, time.Now().Add(p.ttl)
	return cfg, nil
}

func (p *ECRProvider) apiEndpoint() string {
	for _, e := range []string{p.endpoint, os.Getenv("AWS_ENDPOINT_URL_ECR"), os.Getenv("AWS_ENDPOINT_URL")} {
		if e != "" {
			return e
		}
	}
	suffix := "amazonaws.com"
	if strings.HasPrefix(p.region, "cn-") {
		suffix = "amazonaws.com.cn"
	}
	return fmt.Sprintf("https://api.ecr.%s.%s", p.region, suffix)
}

func (p *ECRProvider) fetch(ctx context.Context) (*authn.AuthConfig, error) {
	body := []byte("{}")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.apiEndpoint()+"/", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken")
	signV4(req, body, p.accessKey, p.secretKey, p.sessionToken, p.region, "ecr", time.Now().UTC())

	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var apiErr struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(data, &apiErr)
		return nil, fmt.Errorf("ECR GetAuthorizationToken: HTTP %d %s: %s", resp.StatusCode, apiErr.Type, apiErr.Message)
	}
	var out struct {
		AuthorizationData []struct {
			AuthorizationToken *string `json:"authorizationToken"`
		} `json:"authorizationData"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("ECR GetAuthorizationToken: %w", err)
	}
	if len(out.AuthorizationData) == 0 || out.AuthorizationData[0].AuthorizationToken == nil {
		return nil, fmt.Errorf("no authorization data returned from ECR")
	}
	decoded, err := base64.StdEncoding.DecodeString(*out.AuthorizationData[0].AuthorizationToken)
	if err != nil {
		return nil, fmt.Errorf("failed to decode ECR token: %w", err)
	}
	user, pass, ok := strings.Cut(string(decoded), ":")
	if !ok {
		return nil, fmt.Errorf("invalid ECR token format")
	}
	return &authn.AuthConfig{Username: user, Password: pass}, nil
}

// signV4 signs req (AWS Signature Version 4, header form) over the Host,
// Content-Length, Content-Type and X-Amz-* headers, as the AWS SDK does.
func signV4(req *http.Request, body []byte, accessKey, secretKey, sessionToken, region, service string, now time.Time) {
	amzDate := now.Format("20060102T150405Z")
	date := now.Format("20060102")
	req.Header.Set("X-Amz-Date", amzDate)
	if sessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", sessionToken)
	}
	payloadHash := sha256Hex(body)

	headers := map[string]string{"host": req.URL.Host}
	if req.ContentLength > 0 {
		headers["content-length"] = strconv.FormatInt(req.ContentLength, 10)
	}
	for name, values := range req.Header {
		lower := strings.ToLower(name)
		if lower == "content-type" || strings.HasPrefix(lower, "x-amz-") {
			headers[lower] = strings.TrimSpace(strings.Join(values, ","))
		}
	}
	names := make([]string, 0, len(headers))
	for name := range headers {
		names = append(names, name)
	}
	sort.Strings(names)
	var canonHeaders strings.Builder
	for _, name := range names {
		canonHeaders.WriteString(name + ":" + headers[name] + "\n")
	}
	signedHeaders := strings.Join(names, ";")

	path := req.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canonicalRequest := strings.Join([]string{
		req.Method, path, canonicalQuery(req.URL.Query()), canonHeaders.String(), signedHeaders, payloadHash,
	}, "\n")
	scope := date + "/" + region + "/" + service + "/aws4_request"
	stringToSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + sha256Hex([]byte(canonicalRequest))

	key := hmacSHA256([]byte("AWS4"+secretKey), date)
	key = hmacSHA256(key, region)
	key = hmacSHA256(key, service)
	key = hmacSHA256(key, "aws4_request")
	signature := hex.EncodeToString(hmacSHA256(key, stringToSign))

	req.Header.Set("Authorization", fmt.Sprintf("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s",
		accessKey, scope, signedHeaders, signature))
}

func canonicalQuery(q url.Values) string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		vals := append([]string(nil), q[k]...)
		sort.Strings(vals)
		for _, v := range vals {
			parts = append(parts, awsEscape(k)+"="+awsEscape(v))
		}
	}
	return strings.Join(parts, "&")
}

func awsEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}
