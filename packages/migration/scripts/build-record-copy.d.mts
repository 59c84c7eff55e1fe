export declare const WAT_PATH: string;
export declare const OUT_PATH: string;
export declare function buildRecordCopy(): Promise<{ bytes: Uint8Array; base64: string; text: string }>;
