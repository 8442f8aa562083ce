// For tests: the one CRI call kubelet makes to pull an image, ImageService/PullImage, sent to
// containerd's socket as gRPC over HTTP/2. Unlike `ctr pull --hosts-dir`, this takes the path a
// real node takes, where containerd finds hosts.toml only through config_path in config.toml.
// The messages are small enough to encode by hand (protobuf wire format), so no gRPC library.
import http2 from 'node:http2';
import net from 'node:net';

/** protobuf: a length-delimited field (wire type 2). */
function field(number: number, payload: Buffer): Buffer {
  const header: number[] = [(number << 3) | 2];
  let length = payload.length;
  while (length >= 0x80) {
    header.push((length & 0x7f) | 0x80);
    length >>>= 7;
  }
  header.push(length);
  return Buffer.concat([Buffer.from(header), payload]);
}

/** PullImageResponse.image_ref (field 1), the only field in the answer. */
function readImageRef(message: Buffer): string {
  if (message.length === 0 || message[0] !== 0x0a) return '';
  let length = 0;
  let shift = 0;
  let offset = 1;
  for (;;) {
    const byte = message[offset++]!;
    length |= (byte & 0x7f) << shift;
    if (byte < 0x80) break;
    shift += 7;
  }
  return message.subarray(offset, offset + length).toString('utf8');
}

/** PullImage(image) on containerd's CRI (runtime.v1); resolves to the image ref (its digest), rejects with grpc-message. */
export async function criPullImage(socket: string, image: string, timeoutMs = 60_000): Promise<string> {
  // PullImageRequest { ImageSpec image = 1 { string image = 1 } }
  const request = field(1, field(1, Buffer.from(image)));
  const frame = Buffer.alloc(5 + request.length);
  frame.writeUInt32BE(request.length, 1);
  request.copy(frame, 5);

  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  try {
    return await new Promise<string>((resolve, reject) => {
      session.on('error', reject);
      const stream = session.request({
        ':method': 'POST',
        ':path': '/runtime.v1.ImageService/PullImage',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      const timer = setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), timeoutMs);
      const chunks: Buffer[] = [];
      let trailers: http2.IncomingHttpHeaders = {};
      let headers: http2.IncomingHttpHeaders = {};
      stream.on('response', (h) => (headers = h));
      stream.on('trailers', (t) => (trailers = t));
      stream.on('data', (b: Buffer) => chunks.push(b));
      stream.on('error', reject);
      stream.on('close', () => {
        clearTimeout(timer);
        // a gRPC error may come as trailers-only: grpc-status in the headers
        const status = trailers['grpc-status'] ?? headers['grpc-status'];
        const message = decodeURIComponent(String(trailers['grpc-message'] ?? headers['grpc-message'] ?? ''));
        if (status === undefined) return reject(new Error(`PullImage ${image}: no grpc-status (stream closed early)`));
        if (String(status) !== '0') return reject(new Error(`PullImage ${image}: grpc-status ${String(status)}: ${message}`));
        const body = Buffer.concat(chunks);
        resolve(readImageRef(body.subarray(5, 5 + body.readUInt32BE(1))));
      });
      stream.end(frame);
    });
  } finally {
    session.close();
  }
}
