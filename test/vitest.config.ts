import { defineProject } from 'vitest/config';
import { sharedProject } from '../vitest.shared.js';

// Repository-level tests: packing and workspace hygiene. They need the packages built first
// (npm test builds before it tests).
const shared = sharedProject('repo');
export default defineProject({ ...shared, test: { ...shared.test, include: ['*.test.ts'] } });
