import { test } from 'node:test';
import assert from 'node:assert/strict';
import { basicAuthorization, parseCredentialsLine } from './credentials.ts';

test('a credentials file is one line username:password, and the password may hold colons', () => {
  assert.deepEqual(parseCredentialsLine('node:pa:ss\n'), { username: 'node', password: 'pa:ss' });
  assert.equal(parseCredentialsLine(':nouser'), undefined);
  assert.equal(parseCredentialsLine('no-colon'), undefined);
  assert.equal(parseCredentialsLine('a:b\nc:d\n'), undefined);
  assert.equal(basicAuthorization({ username: 'node', password: 'pa:ss' }), `Basic ${Buffer.from('node:pa:ss').toString('base64')}`);
});
